"""Train a :class:`DiffusionUnetHybridImagePolicy` (upstream's TrainDiffusionUnetHybridWorkspace)."""

from typing import ClassVar

from diffusion_policy_mlx.dataset.base_dataset import BaseImageDataset
from diffusion_policy_mlx.env_runner.base_image_runner import BaseImageRunner
from diffusion_policy_mlx.policy.diffusion_unet_hybrid_image_policy import (
    DiffusionUnetHybridImagePolicy,
)
from diffusion_policy_mlx.workspace.base_workspace import BaseWorkspace


class TrainDiffusionUnetHybridWorkspace(BaseWorkspace):
    """U-Net policy with a ResNet image encoder built from ``shape_meta``."""

    policy_type: ClassVar[tuple[type, ...]] = (DiffusionUnetHybridImagePolicy,)
    dataset_type: ClassVar[tuple[type, ...]] = (BaseImageDataset,)
    runner_type: ClassVar[tuple[type, ...]] = (BaseImageRunner,)
