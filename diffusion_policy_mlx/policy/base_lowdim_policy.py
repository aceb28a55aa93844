"""Interface every low-dimensional-observation policy implements (upstream's BaseLowdimPolicy)."""

import mlx.core as mx

from diffusion_policy_mlx.policy.base_policy import BasePolicy


class BaseLowdimPolicy(BasePolicy):
    """A policy acting on flat observation vectors.

    ``predict_action({"obs": (B, To, Do)[, "obs_mask": (B, To, Do) bool]})`` returns
    ``{"action": (B, Ta, Da), "action_pred": (B, T, Da)}``, unnormalized, as ``mx.array``;
    ``compute_loss`` takes a batch ``{"obs": (B, T, Do), "action": (B, T, Da)}``.
    """

    def predict_action(self, obs_dict: dict[str, mx.array]) -> dict[str, mx.array]:
        raise NotImplementedError
