"""Diffusion Policy with a 1-D conditional U-Net over low-dimensional observations."""

from typing import Any

import mlx.core as mx

from diffusion_policy_mlx.model.diffusion.conditional_unet1d import ConditionalUnet1D
from diffusion_policy_mlx.policy.base_lowdim_policy import BaseLowdimPolicy
from diffusion_policy_mlx.policy.diffusion_common import (
    normalized_lowdim_obs,
    obs_inpainting_condition,
)
from diffusion_policy_mlx.policy.diffusion_policy_base import DiffusionPolicyBase
from diffusion_policy_mlx.schedulers.generative_process import GenerativeProcess


class DiffusionUnetLowdimPolicy(DiffusionPolicyBase, BaseLowdimPolicy):
    """Denoises a (B, T, Da) action trajectory (or (B, T, Da + Do) action+obs when the
    observations are inpainted) with a :class:`ConditionalUnet1D`.

    The observation conditions the model in one of three ways, as upstream:
    ``obs_as_global_cond`` (the first ``n_obs_steps`` normalized obs flattened to (B, To * Do)),
    ``obs_as_local_cond`` (obs (B, T, Do), zero after ``n_obs_steps``), or neither, in which case
    the trajectory holds the obs too and its first ``n_obs_steps`` obs entries are inpainted.
    ``pred_action_steps_only`` (global cond only) denoises just the ``n_action_steps`` executed
    actions; ``oa_step_convention`` makes them start at step ``n_obs_steps - 1`` instead of
    ``n_obs_steps``. Extra ``kwargs`` go to ``noise_scheduler.step``.
    """

    model_kwarg_names = ("local_cond", "global_cond")

    def __init__(
        self,
        model: ConditionalUnet1D,
        noise_scheduler: GenerativeProcess,
        horizon: int,
        obs_dim: int,
        action_dim: int,
        n_action_steps: int,
        n_obs_steps: int,
        num_inference_steps: int | None = None,
        obs_as_local_cond: bool = False,
        obs_as_global_cond: bool = False,
        pred_action_steps_only: bool = False,
        oa_step_convention: bool = False,
        **kwargs: Any,
    ):
        if obs_as_local_cond and obs_as_global_cond:
            raise ValueError(
                "DiffusionUnetLowdimPolicy: obs_as_local_cond and obs_as_global_cond are both "
                "True; choose at most one way to pass the observations"
            )
        if pred_action_steps_only and not obs_as_global_cond:
            raise ValueError(
                "DiffusionUnetLowdimPolicy: pred_action_steps_only=True needs "
                "obs_as_global_cond=True"
            )
        obs_as_cond = obs_as_local_cond or obs_as_global_cond
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
        self.obs_as_local_cond = obs_as_local_cond
        self.obs_as_global_cond = obs_as_global_cond
        self.pred_action_steps_only = pred_action_steps_only
        self.oa_step_convention = oa_step_convention

    @property
    def action_start(self) -> int:
        return self.n_obs_steps - 1 if self.oa_step_convention else self.n_obs_steps

    def predict_action(
        self, obs_dict: dict[str, mx.array], key: mx.array | None = None
    ) -> dict[str, mx.array]:
        """``obs_dict["obs"]``: (B, To', Do) with To' >= n_obs_steps. Returns ``action`` (B, Ta, Da)
        and ``action_pred`` (B, T, Da), plus ``obs_pred`` (B, T, Do) and ``action_obs_pred``
        (B, Ta, Do) when the observations are inpainted."""
        nobs = normalized_lowdim_obs(self, self.obs_dim, obs_dict)
        B, _, Do = nobs.shape
        To, T, Da = self.n_obs_steps, self.horizon, self.action_dim
        dtype = nobs.dtype

        local_cond = None
        global_cond = None
        if self.obs_as_local_cond:
            # The obs of every step after the first To are zero.
            local_cond = mx.concatenate([nobs[:, :To], mx.zeros((B, T - To, Do), dtype)], axis=1)
            cond_data = mx.zeros((B, T, Da), dtype)
            cond_mask = mx.zeros((B, T, Da), mx.bool_)
        elif self.obs_as_global_cond:
            global_cond = nobs[:, :To].reshape(B, -1)
            shape = (B, self.n_action_steps if self.pred_action_steps_only else T, Da)
            cond_data = mx.zeros(shape, dtype)
            cond_mask = mx.zeros(shape, mx.bool_)
        else:
            cond_data, cond_mask = obs_inpainting_condition(nobs[:, :To], T, Da)

        nsample, result = self.sample_actions(
            cond_data, cond_mask, {"local_cond": local_cond, "global_cond": global_cond}, key
        )
        if not (self.obs_as_local_cond or self.obs_as_global_cond):
            self.add_obs_prediction(nsample, result)
        return result

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

        local_cond = None
        global_cond = None
        trajectory = action
        if self.obs_as_local_cond:
            local_cond = mx.concatenate([obs[:, :To], mx.zeros_like(obs[:, To:])], axis=1)
        elif self.obs_as_global_cond:
            global_cond = obs[:, :To].reshape(obs.shape[0], -1)
            if self.pred_action_steps_only:
                trajectory = self.action_window(action)
        else:
            trajectory = mx.concatenate([action, obs], axis=-1)
        return self.denoising_loss(
            trajectory,
            {"local_cond": local_cond, "global_cond": global_cond},
            noise=noise,
            timesteps=timesteps,
        )
