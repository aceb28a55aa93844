"""Noise schedulers with diffusers' constructor kwargs and step semantics, in MLX."""

from diffusion_policy_mlx.schedulers.ddim import DDIMScheduler
from diffusion_policy_mlx.schedulers.ddpm import DDPMScheduler
from diffusion_policy_mlx.schedulers.scheduling_utils import SchedulerOutput

__all__ = ["DDIMScheduler", "DDPMScheduler", "SchedulerOutput"]
