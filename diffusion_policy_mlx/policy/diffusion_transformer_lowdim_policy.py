"""Diffusion Policy with a time-series transformer over low-dimensional observations."""

from typing import Any

import mlx.core as mx
import mlx.optimizers as optim

from diffusion_policy_mlx.model.diffusion.transformer_for_diffusion import TransformerForDiffusion
from diffusion_policy_mlx.policy.base_lowdim_policy import BaseLowdimPolicy
from diffusion_policy_mlx.policy.diffusion_common import (
    grouped_adamw,
    normalized_lowdim_obs,
    obs_inpainting_condition,
)
from diffusion_policy_mlx.policy.diffusion_policy_base import DiffusionPolicyBase
from diffusion_policy_mlx.schedulers.generative_process import GenerativeProcess


class DiffusionTransformerLowdimPolicy(DiffusionPolicyBase, BaseLowdimPolicy):
    """Denoises a (B, T, Da) action trajectory with a :class:`TransformerForDiffusion`.

    With ``obs_as_cond`` the first ``n_obs_steps`` normalized observations (B, To, Do) are the
    transformer's condition tokens; otherwise the trajectory is (B, T, Da + Do) and its first
    ``n_obs_steps`` obs entries are inpainted. ``pred_action_steps_only`` (needs ``obs_as_cond``)
    denoises just the ``n_action_steps`` executed actions. Extra ``kwargs`` go to
    ``noise_scheduler.step``.
    """

    model_kwarg_names = ("cond",)

    def __init__(
        self,
        model: TransformerForDiffusion,
        noise_scheduler: GenerativeProcess,
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
        if pred_action_steps_only and not obs_as_cond:
            raise ValueError(
                "DiffusionTransformerLowdimPolicy: pred_action_steps_only=True needs obs_as_cond=True"
            )
        super().__init__(
            model,
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

    def predict_action(
        self, obs_dict: dict[str, mx.array], key: mx.array | None = None
    ) -> dict[str, mx.array]:
        """``obs_dict["obs"]``: (B, To', Do) with To' >= n_obs_steps. Returns ``action`` (B, Ta, Da)
        and ``action_pred`` (B, T, Da), plus ``obs_pred`` (B, T, Do) and ``action_obs_pred``
        (B, Ta, Do) when the observations are inpainted."""
        nobs = normalized_lowdim_obs(self, self.obs_dim, obs_dict)
        B = nobs.shape[0]
        To, T, Da = self.n_obs_steps, self.horizon, self.action_dim

        cond = None
        if self.obs_as_cond:
            cond = nobs[:, :To]
            shape = (B, self.n_action_steps if self.pred_action_steps_only else T, Da)
            cond_data = mx.zeros(shape, nobs.dtype)
            cond_mask = mx.zeros(shape, mx.bool_)
        else:
            cond_data, cond_mask = obs_inpainting_condition(nobs[:, :To], T, Da)

        nsample, result = self.sample_actions(cond_data, cond_mask, {"cond": cond}, key)
        if not self.obs_as_cond:
            self.add_obs_prediction(nsample, result)
        return result

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

        cond = None
        trajectory = action
        if self.obs_as_cond:
            cond = obs[:, : self.n_obs_steps]
            if self.pred_action_steps_only:
                trajectory = self.action_window(action)
        else:
            trajectory = mx.concatenate([action, obs], axis=-1)
        return self.denoising_loss(trajectory, {"cond": cond}, noise=noise, timesteps=timesteps)
