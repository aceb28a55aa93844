"""Diffusion Policy with a 1-D conditional U-Net over image (+ low-dim) observations."""

from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from diffusion_policy_mlx.model.common.normalizer import LinearNormalizer
from diffusion_policy_mlx.model.diffusion.conditional_unet1d import ConditionalUnet1D
from diffusion_policy_mlx.policy.base_image_policy import BaseImagePolicy
from diffusion_policy_mlx.policy.diffusion_common import (
    NoiseScheduler,
    action_dim_from_shape_meta,
    conditional_sample,
    diffusion_loss,
    encode_obs_steps,
    init_diffusion_policy,
    obs_inpainting_condition,
)


class DiffusionUnetImagePolicy(BaseImagePolicy):
    """Denoises a (B, T, Da) action trajectory with a :class:`ConditionalUnet1D` conditioned on
    the features of an observation encoder (e.g. ``MultiImageObsEncoder``, output (B, Do)).

    With ``obs_as_global_cond`` the features of the first ``n_obs_steps`` steps, flattened to
    (B, To * Do), are the U-Net's global condition; otherwise the trajectory is (B, T, Da + Do)
    and its first ``n_obs_steps`` feature entries are inpainted. Extra ``kwargs`` go to
    ``noise_scheduler.step``.
    """

    def __init__(
        self,
        shape_meta: dict,
        noise_scheduler: NoiseScheduler,
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
        super().__init__()
        action_dim = action_dim_from_shape_meta(shape_meta, type(self).__name__)
        obs_feature_dim = obs_encoder.output_shape()[0]

        if obs_as_global_cond:
            input_dim = action_dim
            global_cond_dim = obs_feature_dim * n_obs_steps
        else:
            input_dim = action_dim + obs_feature_dim
            global_cond_dim = None
        self.obs_encoder = obs_encoder
        self.model = ConditionalUnet1D(
            input_dim=input_dim,
            local_cond_dim=None,
            global_cond_dim=global_cond_dim,
            diffusion_step_embed_dim=diffusion_step_embed_dim,
            down_dims=list(down_dims),
            kernel_size=kernel_size,
            n_groups=n_groups,
            cond_predict_scale=cond_predict_scale,
        )
        init_diffusion_policy(
            self,
            noise_scheduler,
            horizon=horizon,
            action_dim=action_dim,
            n_action_steps=n_action_steps,
            n_obs_steps=n_obs_steps,
            mask_obs_dim=0 if obs_as_global_cond else obs_feature_dim,
            num_inference_steps=num_inference_steps,
            kwargs=kwargs,
        )
        self.obs_feature_dim = obs_feature_dim
        self.obs_as_global_cond = obs_as_global_cond

    # ========= inference ============
    def conditional_sample(
        self,
        condition_data: mx.array,
        condition_mask: mx.array,
        local_cond: mx.array | None = None,
        global_cond: mx.array | None = None,
        key: mx.array | None = None,
        **kwargs: Any,
    ) -> mx.array:
        """Reverse diffusion from noise to a (B, T, D) trajectory that keeps ``condition_data``
        where ``condition_mask`` is set. ``kwargs`` go to ``noise_scheduler.step``."""
        return conditional_sample(
            self.model,
            self.noise_scheduler,
            self.num_inference_steps,
            condition_data,
            condition_mask,
            {"local_cond": local_cond, "global_cond": global_cond},
            key=key,
            step_cache=self.step_cache if self.compile_sampling else None,
            **kwargs,
        )

    def predict_action(
        self, obs_dict: dict[str, mx.array], key: mx.array | None = None
    ) -> dict[str, mx.array]:
        """``obs_dict``: ``{key: (B, To', ...)}`` (images (B, To', C, H, W) in [0, 1]) with
        To' >= n_obs_steps. Returns ``action`` (B, Ta, Da) and ``action_pred`` (B, T, Da)."""
        if "past_action" in obs_dict:
            raise NotImplementedError("past_action conditioning is not implemented (as upstream)")
        nobs = self.normalizer.normalize(obs_dict)
        To = self.n_obs_steps
        T = self.horizon
        Da = self.action_dim

        # The encoder runs once per call, outside the denoising loop.
        nobs_features = encode_obs_steps(self.obs_encoder, nobs, To)
        B = nobs_features.shape[0]
        global_cond = None
        if self.obs_as_global_cond:
            global_cond = nobs_features.reshape(B, -1)
            cond_data = mx.zeros((B, T, Da), nobs_features.dtype)
            cond_mask = mx.zeros((B, T, Da), mx.bool_)
        else:
            cond_data, cond_mask = obs_inpainting_condition(nobs_features, T, Da)

        nsample = self.conditional_sample(
            cond_data, cond_mask, global_cond=global_cond, key=key, **self.kwargs
        )

        action_pred = self.normalizer["action"].unnormalize(nsample[..., :Da])
        start = To - 1
        action = action_pred[:, start : start + self.n_action_steps]
        return {"action": action, "action_pred": action_pred}

    # ========= training ============
    def set_normalizer(self, normalizer: LinearNormalizer) -> None:
        self.normalizer.load_state_dict(normalizer.state_dict())

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

        condition_mask = self.mask_generator(trajectory.shape)
        return diffusion_loss(
            self.model,
            self.noise_scheduler,
            trajectory,
            condition_mask,
            {"global_cond": global_cond},
            condition_data=cond_data,
            noise=noise,
            timesteps=timesteps,
        )
