"""Interface every image-observation policy implements (upstream's BaseImagePolicy)."""

import mlx.core as mx

from diffusion_policy_mlx.policy.base_policy import BasePolicy


class BaseImagePolicy(BasePolicy):
    """A policy acting on a dict of observations named by the task's ``shape_meta``.

    ``predict_action(obs_dict)`` takes ``{key: (B, To, *shape)}``, images in upstream's layout
    ``(B, To, C, H, W)`` float32 in [0, 1], and returns ``{"action": (B, Ta, Da),
    "action_pred": (B, T, Da)}``, unnormalized, as ``mx.array``; ``compute_loss`` takes
    ``{"obs": {key: (B, T, ...)}, "action": (B, T, Da)}``.
    """

    def predict_action(self, obs_dict: dict[str, mx.array]) -> dict[str, mx.array]:
        raise NotImplementedError
