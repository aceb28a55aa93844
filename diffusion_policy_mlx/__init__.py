"""Diffusion Policy (Chi et al., RSS 2023) on Apple's MLX.

Importing the package first loads an optimized CPU BLAS on Linux (see :mod:`.blas`), which must
happen before ``mlx.core`` is imported anywhere in the process.
"""

from diffusion_policy_mlx.blas import blas_info, load_fast_blas

load_fast_blas()

__all__ = ["blas_info"]
__version__ = "0.1.0"
