"""Diffusion Policy (Chi et al., RSS 2023) on Apple's MLX.

Importing the package registers the safe ``${eval:...}`` config resolver
(:mod:`.config_compat`) and nothing else: no environment variable, allocator setting or kernel.
The speed machinery is configured explicitly by entry points through
:mod:`diffusion_policy_mlx.accel`, whose import loads the fast CPU BLAS.
"""

from diffusion_policy_mlx import config_compat  # noqa: F401  (registers the resolver)

__version__ = "0.1.0"
