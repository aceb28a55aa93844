"""Train a :class:`DiffusionUnetLowdimPolicy` (upstream's TrainDiffusionUnetLowdimWorkspace)."""

from typing import ClassVar

from diffusion_policy_mlx.dataset.base_dataset import BaseLowdimDataset
from diffusion_policy_mlx.env_runner.base_lowdim_runner import BaseLowdimRunner
from diffusion_policy_mlx.policy.diffusion_unet_lowdim_policy import DiffusionUnetLowdimPolicy
from diffusion_policy_mlx.workspace.base_workspace import BaseWorkspace


class TrainDiffusionUnetLowdimWorkspace(BaseWorkspace):
    """U-Net policy on low-dimensional observations; AdamW from ``cfg.optimizer``."""

    policy_type: ClassVar[tuple[type, ...]] = (DiffusionUnetLowdimPolicy,)
    dataset_type: ClassVar[tuple[type, ...]] = (BaseLowdimDataset,)
    runner_type: ClassVar[tuple[type, ...]] = (BaseLowdimRunner,)
