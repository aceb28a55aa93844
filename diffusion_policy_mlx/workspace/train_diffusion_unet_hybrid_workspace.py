"""Train a :class:`DiffusionUnetHybridImagePolicy` (upstream's TrainDiffusionUnetHybridWorkspace)."""

from typing import ClassVar

from diffusion_policy_mlx.dataset.base_dataset import BaseImageDataset
from diffusion_policy_mlx.env_runner.base_image_runner import BaseImageRunner
from diffusion_policy_mlx.workspace.base_workspace import BaseWorkspace


class TrainDiffusionUnetHybridWorkspace(BaseWorkspace):
    """U-Net policy with a ResNet image encoder built from ``shape_meta``."""

    dataset_type: ClassVar[tuple[type, ...]] = (BaseImageDataset,)
    runner_type: ClassVar[tuple[type, ...]] = (BaseImageRunner,)
