"""Speed machinery, beside the framework: the fast CPU BLAS, CPU streams, and the CPU and CUDA
kernels with the layers that use them.

Model code is plain ``mlx.nn``; an entry point (``train.py``, ``eval.py``, a benchmark, your
own script) chooses the fast paths once and swaps them into the policies it built::

    from diffusion_policy_mlx import accel  # first: it loads the fast BLAS ahead of mlx.core

    accel.configure("cpu")  # or cfg.training.device, cfg.get("accel")
    policy = accel.apply(policy)

Importing this package loads an optimized CPU BLAS on Linux (:mod:`.blas`): MLX binds its
``cblas_sgemm`` when ``mlx.core`` is imported, so this must happen first in the process. It is
the only thing the package does at import; the ruff setting ``sections.accel`` in
``pyproject.toml`` sorts this import ahead of ``mlx``. ``python -m diffusion_policy_mlx.accel``
says which BLAS and kernels are in use.
"""

from diffusion_policy_mlx.accel.blas import load_fast_blas

load_fast_blas()

from diffusion_policy_mlx.accel.settings import AccelConfig, configure, current  # noqa: E402
from diffusion_policy_mlx.accel.swap import apply, swap_layers  # noqa: E402

__all__ = ["AccelConfig", "apply", "configure", "current", "swap_layers"]
