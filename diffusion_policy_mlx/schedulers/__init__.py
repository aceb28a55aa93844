"""Generative processes: noise schedulers with diffusers' constructor kwargs and step
semantics, in MLX, behind the :class:`GenerativeProcess` interface the policies use."""

from diffusion_policy_mlx.schedulers.ddim import DDIMScheduler
from diffusion_policy_mlx.schedulers.ddpm import DDPMScheduler
from diffusion_policy_mlx.schedulers.generative_process import GenerativeProcess
from diffusion_policy_mlx.schedulers.scheduling_utils import SchedulerOutput

__all__ = ["DDIMScheduler", "DDPMScheduler", "GenerativeProcess", "SchedulerOutput"]
