"""Diffusion Policy with a time-series transformer over robomimic-style image features."""

from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import mlx.optimizers as optim
from mlx.utils import tree_flatten

from diffusion_policy_mlx.model.diffusion.transformer_for_diffusion import TransformerForDiffusion
from diffusion_policy_mlx.model.vision.robomimic_obs_encoder import RobomimicObsEncoder
from diffusion_policy_mlx.policy.base_image_policy import BaseImagePolicy
from diffusion_policy_mlx.policy.diffusion_common import (
    action_dim_from_shape_meta,
    encode_obs_steps,
    grouped_adamw,
    obs_inpainting_condition,
)
from diffusion_policy_mlx.policy.diffusion_policy_base import DiffusionPolicyBase
from diffusion_policy_mlx.schedulers.generative_process import GenerativeProcess


class DiffusionTransformerHybridImagePolicy(DiffusionPolicyBase, BaseImagePolicy):
    """Denoises a (B, T, Da) action trajectory with a :class:`TransformerForDiffusion` whose
    condition tokens are the robomimic-style encoder's per-step features (B, To, Do).

    ``shape_meta["obs"]`` names the inputs (``type: rgb`` images (C, H, W), ``low_dim``
    vectors). With ``obs_as_cond=False`` the trajectory is (B, T, Da + Do) and its first
    ``n_obs_steps`` feature entries are inpainted; ``pred_action_steps_only`` (needs
    ``obs_as_cond``) denoises just the ``n_action_steps`` executed actions. Extra ``kwargs`` go to
    ``noise_scheduler.step``.
    """

    model_kwarg_names = ("cond",)

    def __init__(
        self,
        shape_meta: dict,
        noise_scheduler: GenerativeProcess,
        # task params
        horizon: int,
        n_action_steps: int,
        n_obs_steps: int,
        num_inference_steps: int | None = None,
        # image
        crop_shape: Sequence[int] | None = (76, 76),
        obs_encoder_group_norm: bool = False,
        eval_fixed_crop: bool = False,
        # arch
        n_layer: int = 8,
        n_cond_layers: int = 0,
        n_head: int = 4,
        n_emb: int = 256,
        p_drop_emb: float = 0.0,
        p_drop_attn: float = 0.3,
        causal_attn: bool = True,
        time_as_cond: bool = True,
        obs_as_cond: bool = True,
        pred_action_steps_only: bool = False,
        **kwargs: Any,
    ):
        if pred_action_steps_only and not obs_as_cond:
            raise ValueError(
                "DiffusionTransformerHybridImagePolicy: pred_action_steps_only=True needs "
                "obs_as_cond=True"
            )
        action_dim = action_dim_from_shape_meta(shape_meta, type(self).__name__)
        obs_encoder = RobomimicObsEncoder(
            shape_meta,
            crop_shape=None if crop_shape is None else tuple(crop_shape),
            obs_encoder_group_norm=obs_encoder_group_norm,
            eval_fixed_crop=eval_fixed_crop,
        )
        obs_feature_dim = obs_encoder.output_shape()[0]
        input_dim = action_dim if obs_as_cond else obs_feature_dim + action_dim

        model = TransformerForDiffusion(
            input_dim=input_dim,
            output_dim=input_dim,
            horizon=horizon,
            n_obs_steps=n_obs_steps,
            cond_dim=obs_feature_dim if obs_as_cond else 0,
            n_layer=n_layer,
            n_head=n_head,
            n_emb=n_emb,
            p_drop_emb=p_drop_emb,
            p_drop_attn=p_drop_attn,
            causal_attn=causal_attn,
            time_as_cond=time_as_cond,
            obs_as_cond=obs_as_cond,
            n_cond_layers=n_cond_layers,
        )
        super().__init__(
            model,
            noise_scheduler,
            horizon=horizon,
            action_dim=action_dim,
            n_action_steps=n_action_steps,
            n_obs_steps=n_obs_steps,
            mask_obs_dim=0 if obs_as_cond else obs_feature_dim,
            num_inference_steps=num_inference_steps,
            kwargs=kwargs,
            obs_encoder=obs_encoder,
        )
        self.obs_feature_dim = obs_feature_dim
        self.obs_as_cond = obs_as_cond
        self.pred_action_steps_only = pred_action_steps_only

    def predict_action(
        self, obs_dict: dict[str, mx.array], key: mx.array | None = None
    ) -> dict[str, mx.array]:
        """``obs_dict``: ``{key: (B, To', ...)}`` (images (B, To', C, H, W) in [0, 1]) with
        To' >= n_obs_steps. Returns ``action`` (B, Ta, Da) and ``action_pred`` (B, T, Da)."""
        if "past_action" in obs_dict:
            raise NotImplementedError("past_action conditioning is not implemented (as upstream)")
        nobs = self.normalizer.normalize(obs_dict)
        To, T, Da = self.n_obs_steps, self.horizon, self.action_dim

        # The encoder runs once per call, outside the denoising loop.
        nobs_features = encode_obs_steps(self.obs_encoder, nobs, To)
        B = nobs_features.shape[0]
        cond = None
        if self.obs_as_cond:
            cond = nobs_features
            shape = (B, self.n_action_steps if self.pred_action_steps_only else T, Da)
            cond_data = mx.zeros(shape, nobs_features.dtype)
            cond_mask = mx.zeros(shape, mx.bool_)
        else:
            cond_data, cond_mask = obs_inpainting_condition(nobs_features, T, Da)

        return self.sample_actions(cond_data, cond_mask, {"cond": cond}, key)[1]

    def get_optimizer(
        self,
        transformer_weight_decay: float,
        obs_encoder_weight_decay: float,
        learning_rate: float,
        betas: tuple[float, float],
    ) -> optim.Optimizer:
        """AdamW over the policy: the transformer's groups (upstream's decay split at
        ``transformer_weight_decay``) plus every obs-encoder parameter at
        ``obs_encoder_weight_decay``."""
        weight_decays = {
            f"model.{name}": group["weight_decay"]
            for group in self.model.get_optim_groups(weight_decay=transformer_weight_decay)
            for name in group["params"]
        }
        for name, _ in tree_flatten(self.obs_encoder.trainable_parameters()):
            weight_decays[f"obs_encoder.{name}"] = obs_encoder_weight_decay
        return grouped_adamw(self, weight_decays, learning_rate, betas)

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
        To = self.n_obs_steps

        cond = None
        trajectory = nactions
        if self.obs_as_cond:
            cond = encode_obs_steps(self.obs_encoder, nobs, To)
            if self.pred_action_steps_only:
                trajectory = self.action_window(nactions)
        else:
            nobs_features = encode_obs_steps(self.obs_encoder, nobs)
            # As upstream: with inpainting the encoder gets no gradient from this loss.
            trajectory = mx.stop_gradient(mx.concatenate([nactions, nobs_features], axis=-1))

        return self.denoising_loss(trajectory, {"cond": cond}, noise=noise, timesteps=timesteps)
