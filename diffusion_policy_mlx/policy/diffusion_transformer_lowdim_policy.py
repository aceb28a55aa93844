"""Diffusion Policy with a time-series transformer over low-dimensional observations."""

from typing import Any

import mlx.core as mx
import mlx.optimizers as optim

from diffusion_policy_mlx.model.common.normalizer import LinearNormalizer
from diffusion_policy_mlx.model.diffusion.transformer_for_diffusion import TransformerForDiffusion
from diffusion_policy_mlx.policy.base_lowdim_policy import BaseLowdimPolicy
from diffusion_policy_mlx.policy.diffusion_common import (
    NoiseScheduler,
    conditional_sample,
    diffusion_loss,
    grouped_adamw,
    init_diffusion_policy,
    obs_inpainting_condition,
)


class DiffusionTransformerLowdimPolicy(BaseLowdimPolicy):
    """Denoises a (B, T, Da) action trajectory with a :class:`TransformerForDiffusion`.

    With ``obs_as_cond`` the first ``n_obs_steps`` normalized observations (B, To, Do) are the
    transformer's condition tokens; otherwise the trajectory is (B, T, Da + Do) and its first
    ``n_obs_steps`` obs entries are inpainted. ``pred_action_steps_only`` (needs ``obs_as_cond``)
    denoises just the ``n_action_steps`` executed actions. Extra ``kwargs`` go to
    ``noise_scheduler.step``.
    """

    def __init__(
        self,
        model: TransformerForDiffusion,
        noise_scheduler: NoiseScheduler,
        horizon: int,
        obs_dim: int,
        action_dim: int,
        n_action_steps: int,
        n_obs_steps: int,
        num_inference_steps: int | None = None,
        obs_as_cond: bool = False,
        pred_action_steps_only: bool = False,
        **kwargs: Any,
    ):
        super().__init__()
        if pred_action_steps_only and not obs_as_cond:
            raise ValueError(
                "DiffusionTransformerLowdimPolicy: pred_action_steps_only=True needs obs_as_cond=True"
            )
        self.model = model
        init_diffusion_policy(
            self,
            noise_scheduler,
            horizon=horizon,
            action_dim=action_dim,
            n_action_steps=n_action_steps,
            n_obs_steps=n_obs_steps,
            mask_obs_dim=0 if obs_as_cond else obs_dim,
            num_inference_steps=num_inference_steps,
            kwargs=kwargs,
        )
        self.obs_dim = obs_dim
        self.obs_as_cond = obs_as_cond
        self.pred_action_steps_only = pred_action_steps_only

    # ========= inference ============
    def conditional_sample(
        self,
        condition_data: mx.array,
        condition_mask: mx.array,
        cond: mx.array | None = None,
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
            {"cond": cond},
            key=key,
            step_cache=self.step_cache if self.compile_sampling else None,
            **kwargs,
        )

    def predict_action(
        self, obs_dict: dict[str, mx.array], key: mx.array | None = None
    ) -> dict[str, mx.array]:
        """``obs_dict["obs"]``: (B, To', Do) with To' >= n_obs_steps. Returns ``action`` (B, Ta, Da)
        and ``action_pred`` (B, T, Da), plus ``obs_pred`` (B, T, Do) and ``action_obs_pred``
        (B, Ta, Do) when the observations are inpainted."""
        if "obs" not in obs_dict:
            raise KeyError(
                f"DiffusionTransformerLowdimPolicy.predict_action needs obs_dict['obs']; got keys {sorted(obs_dict)}"
            )
        if "past_action" in obs_dict:
            raise NotImplementedError("past_action conditioning is not implemented (as upstream)")
        nobs = self.normalizer["obs"].normalize(obs_dict["obs"])
        B, _, Do = nobs.shape
        if Do != self.obs_dim:
            raise ValueError(
                f"obs_dict['obs'] has {Do} features per step; the policy was built with obs_dim={self.obs_dim}"
            )
        To = self.n_obs_steps
        T = self.horizon
        Da = self.action_dim

        cond = None
        if self.obs_as_cond:
            cond = nobs[:, :To]
            shape = (B, self.n_action_steps if self.pred_action_steps_only else T, Da)
            cond_data = mx.zeros(shape, nobs.dtype)
            cond_mask = mx.zeros(shape, mx.bool_)
        else:
            cond_data, cond_mask = obs_inpainting_condition(nobs[:, :To], T, Da)

        nsample = self.conditional_sample(cond_data, cond_mask, cond=cond, key=key, **self.kwargs)

        action_pred = self.normalizer["action"].unnormalize(nsample[..., :Da])
        action_slice = slice(To - 1, To - 1 + self.n_action_steps)
        if self.pred_action_steps_only:
            action = action_pred
        else:
            action = action_pred[:, action_slice]
        result = {"action": action, "action_pred": action_pred}
        if not self.obs_as_cond:
            obs_pred = self.normalizer["obs"].unnormalize(nsample[..., Da:])
            result["action_obs_pred"] = obs_pred[:, action_slice]
            result["obs_pred"] = obs_pred
        return result

    # ========= training ============
    def set_normalizer(self, normalizer: LinearNormalizer) -> None:
        self.normalizer.load_state_dict(normalizer.state_dict())

    def get_optimizer(
        self, weight_decay: float, learning_rate: float, betas: tuple[float, float]
    ) -> optim.Optimizer:
        """AdamW that decays the transformer's linear/attention weights by ``weight_decay`` and
        nothing else (upstream's ``configure_optimizers`` groups)."""
        weight_decays = {
            f"model.{name}": group["weight_decay"]
            for group in self.model.get_optim_groups(weight_decay=weight_decay)
            for name in group["params"]
        }
        return grouped_adamw(self, weight_decays, learning_rate, betas)

    def compute_loss(
        self,
        batch: dict[str, mx.array],
        noise: mx.array | None = None,
        timesteps: mx.array | None = None,
    ) -> mx.array:
        """Diffusion loss for ``{"obs": (B, T, Do), "action": (B, T, Da)}``. ``noise`` (shaped
        like the denoised trajectory) and ``timesteps`` (B,) are drawn when not given."""
        if "valid_mask" in batch:
            raise NotImplementedError("batch['valid_mask'] is not supported (as upstream)")
        obs = self.normalizer["obs"].normalize(batch["obs"])
        action = self.normalizer["action"].normalize(batch["action"])
        To = self.n_obs_steps

        cond = None
        trajectory = action
        if self.obs_as_cond:
            cond = obs[:, :To]
            if self.pred_action_steps_only:
                trajectory = action[:, To - 1 : To - 1 + self.n_action_steps]
        else:
            trajectory = mx.concatenate([action, obs], axis=-1)

        if self.pred_action_steps_only:
            condition_mask = mx.zeros(trajectory.shape, mx.bool_)
        else:
            condition_mask = self.mask_generator(trajectory.shape)

        return diffusion_loss(
            self.model,
            self.noise_scheduler,
            trajectory,
            condition_mask,
            {"cond": cond},
            noise=noise,
            timesteps=timesteps,
        )
