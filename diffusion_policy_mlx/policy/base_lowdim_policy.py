"""Interface every low-dimensional-observation policy implements (upstream's BaseLowdimPolicy)."""

import mlx.core as mx
import mlx.nn as nn

from diffusion_policy_mlx.model.common.normalizer import LinearNormalizer


class BaseLowdimPolicy(nn.Module):
    """A policy acting on flat observation vectors.

    ``predict_action({"obs": (B, To, Do)[, "obs_mask": (B, To, Do) bool]})`` returns
    ``{"action": (B, Ta, Da), "action_pred": (B, T, Da)}``, unnormalized, as ``mx.array``.
    """

    def predict_action(self, obs_dict: dict[str, mx.array]) -> dict[str, mx.array]:
        raise NotImplementedError

    def reset(self) -> None:
        """Clear any per-episode state (stateless policies need nothing)."""

    def set_normalizer(self, normalizer: LinearNormalizer) -> None:
        raise NotImplementedError

    def compute_loss(self, batch: dict[str, mx.array]) -> mx.array:
        """Scalar training loss for a batch ``{"obs": (B, T, Do), "action": (B, T, Da)}``."""
        raise NotImplementedError
