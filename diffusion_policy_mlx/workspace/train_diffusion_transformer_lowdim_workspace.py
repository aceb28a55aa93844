"""Train a :class:`DiffusionTransformerLowdimPolicy` (upstream's TrainDiffusionTransformerLowdimWorkspace)."""

from typing import ClassVar

import mlx.optimizers as optim

from diffusion_policy_mlx.dataset.base_dataset import BaseLowdimDataset
from diffusion_policy_mlx.env_runner.base_lowdim_runner import BaseLowdimRunner
from diffusion_policy_mlx.policy.diffusion_transformer_lowdim_policy import (
    DiffusionTransformerLowdimPolicy,
)
from diffusion_policy_mlx.workspace.base_workspace import BaseWorkspace


class TrainDiffusionTransformerLowdimWorkspace(BaseWorkspace):
    """Transformer policy on low-dimensional observations.

    ``cfg.optimizer`` (``learning_rate``, ``weight_decay``, ``betas``) goes to the policy's
    ``get_optimizer``, which exempts biases, norms and embeddings from weight decay.
    """

    policy_type: ClassVar[tuple[type, ...]] = (DiffusionTransformerLowdimPolicy,)
    dataset_type: ClassVar[tuple[type, ...]] = (BaseLowdimDataset,)
    runner_type: ClassVar[tuple[type, ...]] = (BaseLowdimRunner,)

    def build_optimizer(self) -> optim.Optimizer:
        return self.model.get_optimizer(**self.cfg.optimizer)
