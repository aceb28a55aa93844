"""Interface every image-observation policy implements (upstream's BaseImagePolicy)."""

import mlx.core as mx
import mlx.nn as nn

from diffusion_policy_mlx.model.common.normalizer import LinearNormalizer


class BaseImagePolicy(nn.Module):
    """A policy acting on a dict of observations named by the task's ``shape_meta``.

    ``predict_action(obs_dict)`` takes ``{key: (B, To, *shape)}``, images in upstream's layout
    ``(B, To, C, H, W)`` float32 in [0, 1], and returns ``{"action": (B, Ta, Da),
    "action_pred": (B, T, Da)}``, unnormalized, as ``mx.array``.
    """

    def predict_action(self, obs_dict: dict[str, mx.array]) -> dict[str, mx.array]:
        raise NotImplementedError

    def reset(self) -> None:
        """Clear any per-episode state (stateless policies need nothing)."""

    def set_normalizer(self, normalizer: LinearNormalizer) -> None:
        raise NotImplementedError

    def compute_loss(self, batch: dict) -> mx.array:
        """Scalar training loss for ``{"obs": {key: (B, T, ...)}, "action": (B, T, Da)}``."""
        raise NotImplementedError
