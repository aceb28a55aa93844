"""Train a :class:`DiffusionUnetImagePolicy` (upstream's TrainDiffusionUnetImageWorkspace)."""

from pathlib import Path
from typing import ClassVar

from omegaconf import DictConfig

from diffusion_policy_mlx.dataset.base_dataset import BaseImageDataset
from diffusion_policy_mlx.env_runner.base_image_runner import BaseImageRunner
from diffusion_policy_mlx.policy.diffusion_unet_image_policy import DiffusionUnetImagePolicy
from diffusion_policy_mlx.workspace.base_workspace import BaseWorkspace


class TrainDiffusionUnetImageWorkspace(BaseWorkspace):
    """U-Net policy with the configurable ``policy.obs_encoder``.

    ``training.freeze_encoder`` keeps the observation encoder's weights fixed (and in eval
    mode), as upstream does for pretrained encoders.
    """

    policy_type: ClassVar[tuple[type, ...]] = (DiffusionUnetImagePolicy,)
    dataset_type: ClassVar[tuple[type, ...]] = (BaseImageDataset,)
    runner_type: ClassVar[tuple[type, ...]] = (BaseImageRunner,)

    def __init__(self, cfg: DictConfig, output_dir: str | Path | None = None):
        super().__init__(cfg, output_dir=output_dir)
        if self.cfg.training.get("freeze_encoder", False):
            # Frozen before training starts, so the optimizer never holds state for it.
            self.model.obs_encoder.freeze()

    def policy_train_mode(self) -> None:
        super().policy_train_mode()
        if self.cfg.training.get("freeze_encoder", False):
            self.model.obs_encoder.eval()
