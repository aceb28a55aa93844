"""``python -m diffusion_policy_mlx.accel``: which BLAS and CPU kernels this process uses."""

from diffusion_policy_mlx.accel.settings import status

for what, state in status().items():
    print(f"{what}: {state}")
