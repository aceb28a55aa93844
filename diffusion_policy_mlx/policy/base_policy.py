"""What every policy is, whatever its observations: the part upstream's BaseLowdimPolicy and
BaseImagePolicy share."""

import mlx.core as mx
import mlx.nn as nn

from diffusion_policy_mlx.common.batch_split import BatchSplit
from diffusion_policy_mlx.model.common.normalizer import LinearNormalizer


class BasePolicy(nn.Module):
    """A policy: ``predict_action`` for acting, ``compute_loss`` for training.

    ``batch_split`` lays out the training step's and the sampler's batches (whole, or over
    accel's CPU streams once :func:`diffusion_policy_mlx.accel.apply` set it).
    """

    batch_split: BatchSplit = BatchSplit()

    def predict_action(self, obs_dict: dict) -> dict[str, mx.array]:
        raise NotImplementedError

    def reset(self) -> None:
        """Clear any per-episode state (stateless policies need nothing)."""

    def set_normalizer(self, normalizer: LinearNormalizer) -> None:
        raise NotImplementedError

    def compute_loss(self, batch: dict) -> mx.array:
        raise NotImplementedError

    def action_error_pair(
        self, result: dict[str, mx.array], action: mx.array
    ) -> tuple[mx.array, mx.array]:
        """The predicted actions of ``predict_action``'s ``result`` and the part of the
        ground-truth ``action`` (B, T, Da) they predict: the whole trajectory here."""
        return result["action_pred"], action
