"""Diffusion Policy with a 1-D conditional U-Net over image (+ low-dim) observations."""

from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from diffusion_policy_mlx.model.diffusion.conditional_unet1d import ConditionalUnet1D
from diffusion_policy_mlx.policy.base_image_policy import BaseImagePolicy
from diffusion_policy_mlx.policy.diffusion_common import (
    action_dim_from_shape_meta,
    encode_obs_steps,
    obs_inpainting_condition,
)
from diffusion_policy_mlx.policy.diffusion_policy_base import DiffusionPolicyBase
from diffusion_policy_mlx.schedulers.generative_process import GenerativeProcess


class DiffusionUnetImagePolicy(DiffusionPolicyBase, BaseImagePolicy):
    """Denoises a (B, T, Da) action trajectory with a :class:`ConditionalUnet1D` conditioned on
    the features of an observation encoder (e.g. ``MultiImageObsEncoder``, output (B, Do)).

    With ``obs_as_global_cond`` the features of the first ``n_obs_steps`` steps, flattened to
    (B, To * Do), are the U-Net's global condition; otherwise the trajectory is (B, T, Da + Do)
    and its first ``n_obs_steps`` feature entries are inpainted. Extra ``kwargs`` go to
    ``noise_scheduler.step``.
    """

    model_kwarg_names = ("local_cond", "global_cond")

    def __init__(
        self,
        shape_meta: dict,
        noise_scheduler: GenerativeProcess,
        obs_encoder: nn.Module,
        horizon: int,
        n_action_steps: int,
        n_obs_steps: int,
        num_inference_steps: int | None = None,
        obs_as_global_cond: bool = True,
        diffusion_step_embed_dim: int = 256,
        down_dims: Sequence[int] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        cond_predict_scale: bool = True,
        **kwargs: Any,
    ):
        action_dim = action_dim_from_shape_meta(shape_meta, type(self).__name__)
        obs_feature_dim = obs_encoder.output_shape()[0]
        if obs_as_global_cond:
            input_dim = action_dim
            global_cond_dim = obs_feature_dim * n_obs_steps
        else:
            input_dim = action_dim + obs_feature_dim
            global_cond_dim = None
        model = ConditionalUnet1D(
            input_dim=input_dim,
            local_cond_dim=None,
            global_cond_dim=global_cond_dim,
            diffusion_step_embed_dim=diffusion_step_embed_dim,
            down_dims=list(down_dims),
            kernel_size=kernel_size,
            n_groups=n_groups,
            cond_predict_scale=cond_predict_scale,
        )
        super().__init__(
            model,
            noise_scheduler,
            horizon=horizon,
            action_dim=action_dim,
            n_action_steps=n_action_steps,
            n_obs_steps=n_obs_steps,
            mask_obs_dim=0 if obs_as_global_cond else obs_feature_dim,
            num_inference_steps=num_inference_steps,
            kwargs=kwargs,
            obs_encoder=obs_encoder,
        )
        self.obs_feature_dim = obs_feature_dim
        self.obs_as_global_cond = obs_as_global_cond

    def predict_action(
        self, obs_dict: dict[str, mx.array], key: mx.array | None = None
    ) -> dict[str, mx.array]:
        """``obs_dict``: ``{key: (B, To', ...)}`` (images (B, To', C, H, W) in [0, 1]) with
        To' >= n_obs_steps. Returns ``action`` (B, Ta, Da) and ``action_pred`` (B, T, Da)."""
        if "past_action" in obs_dict:
            raise NotImplementedError("past_action conditioning is not implemented (as upstream)")
        nobs = self.normalizer.normalize(obs_dict)
        T, Da = self.horizon, self.action_dim

        # The encoder runs once per call, outside the denoising loop.
        nobs_features = encode_obs_steps(self.obs_encoder, nobs, self.n_obs_steps)
        B = nobs_features.shape[0]
        global_cond = None
        if self.obs_as_global_cond:
            global_cond = nobs_features.reshape(B, -1)
            cond_data = mx.zeros((B, T, Da), nobs_features.dtype)
            cond_mask = mx.zeros((B, T, Da), mx.bool_)
        else:
            cond_data, cond_mask = obs_inpainting_condition(nobs_features, T, Da)
        return self.sample_actions(cond_data, cond_mask, {"global_cond": global_cond}, key)[1]

    def compute_loss(
        self,
        batch: dict,
        noise: mx.array | None = None,
        timesteps: mx.array | None = None,
    ) -> mx.array:
        """Diffusion loss for ``{"obs": {key: (B, T, ...)}, "action": (B, T, Da)}``. ``noise``
        (shaped like the denoised trajectory) and ``timesteps`` (B,) are drawn when not given."""
        if "valid_mask" in batch:
            raise NotImplementedError("batch['valid_mask'] is not supported (as upstream)")
        nobs = self.normalizer.normalize(batch["obs"])
        nactions = self.normalizer["action"].normalize(batch["action"])

        global_cond = None
        trajectory = nactions
        cond_data = trajectory
        if self.obs_as_global_cond:
            nobs_features = encode_obs_steps(self.obs_encoder, nobs, self.n_obs_steps)
            global_cond = nobs_features.reshape(nobs_features.shape[0], -1)
        else:
            nobs_features = encode_obs_steps(self.obs_encoder, nobs)
            cond_data = mx.concatenate([nactions, nobs_features], axis=-1)
            # As upstream: the target holds no gradient, but the inpainted features do, so the
            # encoder learns through the conditioned entries.
            trajectory = mx.stop_gradient(cond_data)
        return self.denoising_loss(
            trajectory,
            {"global_cond": global_cond},
            condition_data=cond_data,
            noise=noise,
            timesteps=timesteps,
        )
