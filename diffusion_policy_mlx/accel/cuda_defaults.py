"""MLX CUDA-backend settings this package defaults to, unless the user set them.

Measured on an H100 with MLX 0.32.4 (``benchmarks/bench_train_step.py``,
``benchmarks/bench_startup.py``):

* ``MLX_USE_CUDA_GRAPHS=0``: MLX captures each command buffer as a CUDA graph by default. For
  these policies' graphs (hundreds of small kernels, re-run with new inputs every step) the
  capture costs more than it saves: the fused training step goes from 39.1 to 18.4 ms (lowdim
  U-Net, batch 256) and 54.5 to 33.3 ms (hybrid, batch 64); ``predict_action`` at batch 1 from
  384 to 239 ms (DDPM 100 steps) and 63 to 34 ms (DDIM 16).
* ``MLX_PTX_CACHE_DIR``: MLX compiles the fused kernels of every ``mx.compile``d graph with
  NVRTC on first use, 55 s for the lowdim policy's sampler. Kept on disk, a later process
  (``eval.py`` after ``train.py``, a resumed run) starts in 1 s.

Set either variable yourself (``MLX_USE_CUDA_GRAPHS=1`` to measure the other way) and it is left
alone. MLX reads both at the first GPU computation, so they apply when the package is imported
before anything runs on the GPU.
"""

import os
from collections.abc import MutableMapping
from pathlib import Path

from diffusion_policy_mlx.common.cache_dir import cache_home

GRAPHS_VAR = "MLX_USE_CUDA_GRAPHS"
PTX_CACHE_VAR = "MLX_PTX_CACHE_DIR"


def default_ptx_cache_dir(environ: MutableMapping[str, str] = os.environ) -> Path:
    """``$XDG_CACHE_HOME/diffusion_policy_mlx/ptx``, ``~/.cache/...`` without it."""
    return cache_home(environ) / "ptx"


def apply_cuda_defaults(
    cuda_available: bool, environ: MutableMapping[str, str] = os.environ
) -> dict[str, str]:
    """Set the variables above in ``environ`` where unset, when MLX runs on CUDA; returns
    those it set."""
    if not cuda_available:
        return {}
    applied = {}
    if GRAPHS_VAR not in environ:
        applied[GRAPHS_VAR] = "0"
    if PTX_CACHE_VAR not in environ:
        cache = default_ptx_cache_dir(environ)
        cache.mkdir(parents=True, exist_ok=True)
        applied[PTX_CACHE_VAR] = str(cache)
    environ.update(applied)
    return applied
