"""Diffusion Policy (Chi et al., RSS 2023) on Apple's MLX.

Importing the package first loads an optimized CPU BLAS on Linux (see :mod:`.blas`), which must
happen before ``mlx.core`` is imported anywhere in the process, and, on NVIDIA GPUs, the MLX CUDA
settings of :mod:`.cuda_defaults` where the user has not set them, and without a GPU the MLX
setting of :mod:`.common.cpu_streams` and the ``malloc`` setting of :mod:`.cpu_malloc`.
"""

from diffusion_policy_mlx.accel.blas import blas_info, load_fast_blas

load_fast_blas()

# Registers the safe ${eval:...} resolver for every process that imports the package (Hydra
# launcher workers included); imported after the BLAS because it imports mlx.core.
import mlx.core as mx  # noqa: E402

from diffusion_policy_mlx import config_compat  # noqa: E402, F401
from diffusion_policy_mlx.accel.cpu_streams import apply_cpu_defaults  # noqa: E402
from diffusion_policy_mlx.accel.cuda_defaults import apply_cuda_defaults  # noqa: E402
from diffusion_policy_mlx.accel.malloc import keep_freed_memory  # noqa: E402

apply_cuda_defaults(mx.cuda.is_available())
gpu_available = mx.is_available(mx.gpu)
apply_cpu_defaults(gpu_available)
keep_freed_memory(gpu_available)

__all__ = ["blas_info"]
__version__ = "0.1.0"
