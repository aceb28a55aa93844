"""Train a :class:`DiffusionTransformerHybridImagePolicy` (upstream's TrainDiffusionTransformerHybridWorkspace)."""

from typing import ClassVar

import mlx.optimizers as optim

from diffusion_policy_mlx.dataset.base_dataset import BaseImageDataset
from diffusion_policy_mlx.env_runner.base_image_runner import BaseImageRunner
from diffusion_policy_mlx.policy.diffusion_transformer_hybrid_image_policy import (
    DiffusionTransformerHybridImagePolicy,
)
from diffusion_policy_mlx.workspace.base_workspace import BaseWorkspace


class TrainDiffusionTransformerHybridWorkspace(BaseWorkspace):
    """Transformer policy with a ResNet image encoder.

    ``cfg.optimizer`` (``transformer_weight_decay``, ``obs_encoder_weight_decay``,
    ``learning_rate``, ``betas``) goes to the policy's ``get_optimizer``: AdamW with upstream's
    optimizer groups.
    """

    policy_type: ClassVar[tuple[type, ...]] = (DiffusionTransformerHybridImagePolicy,)
    dataset_type: ClassVar[tuple[type, ...]] = (BaseImageDataset,)
    runner_type: ClassVar[tuple[type, ...]] = (BaseImageRunner,)

    def build_optimizer(self) -> optim.Optimizer:
        return self.model.get_optimizer(**self.cfg.optimizer)
