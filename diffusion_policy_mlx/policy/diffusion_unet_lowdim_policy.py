"""Diffusion Policy with a 1-D conditional U-Net over low-dimensional observations."""

from typing import Any

import mlx.core as mx

from diffusion_policy_mlx.model.common.normalizer import LinearNormalizer
from diffusion_policy_mlx.model.diffusion.conditional_unet1d import ConditionalUnet1D
from diffusion_policy_mlx.policy.base_lowdim_policy import BaseLowdimPolicy
from diffusion_policy_mlx.policy.diffusion_common import (
    NoiseScheduler,
    conditional_sample,
    diffusion_loss,
    init_diffusion_policy,
    obs_inpainting_condition,
)


class DiffusionUnetLowdimPolicy(BaseLowdimPolicy):
    """Denoises a (B, T, Da) action trajectory (or (B, T, Da + Do) action+obs when the
    observations are inpainted) with a :class:`ConditionalUnet1D`.

    The observation conditions the model in one of three ways, as upstream:
    ``obs_as_global_cond`` (the first ``n_obs_steps`` normalized obs flattened to (B, To * Do)),
    ``obs_as_local_cond`` (obs (B, T, Do), zero after ``n_obs_steps``), or neither, in which case
    the trajectory holds the obs too and its first ``n_obs_steps`` obs entries are inpainted.
    ``pred_action_steps_only`` (global cond only) denoises just the ``n_action_steps`` executed
    actions. Extra ``kwargs`` go to ``noise_scheduler.step``.
    """

    def __init__(
        self,
        model: ConditionalUnet1D,
        noise_scheduler: NoiseScheduler,
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
        super().__init__()
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
        self.model = model
        obs_as_cond = obs_as_local_cond or obs_as_global_cond
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
        self.obs_as_local_cond = obs_as_local_cond
        self.obs_as_global_cond = obs_as_global_cond
        self.pred_action_steps_only = pred_action_steps_only
        self.oa_step_convention = oa_step_convention

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

    def _action_slice(self) -> slice:
        start = self.n_obs_steps - 1 if self.oa_step_convention else self.n_obs_steps
        return slice(start, start + self.n_action_steps)

    def predict_action(
        self, obs_dict: dict[str, mx.array], key: mx.array | None = None
    ) -> dict[str, mx.array]:
        """``obs_dict["obs"]``: (B, To', Do) with To' >= n_obs_steps. Returns ``action`` (B, Ta, Da)
        and ``action_pred`` (B, T, Da), plus ``obs_pred`` (B, T, Do) and ``action_obs_pred``
        (B, Ta, Do) when the observations are inpainted."""
        if "obs" not in obs_dict:
            raise KeyError(
                f"DiffusionUnetLowdimPolicy.predict_action needs obs_dict['obs']; got keys {sorted(obs_dict)}"
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

        nsample = self.conditional_sample(
            cond_data,
            cond_mask,
            local_cond=local_cond,
            global_cond=global_cond,
            key=key,
            **self.kwargs,
        )

        action_pred = self.normalizer["action"].unnormalize(nsample[..., :Da])
        action_slice = self._action_slice()
        if self.pred_action_steps_only:
            action = action_pred
        else:
            action = action_pred[:, action_slice]
        result = {"action": action, "action_pred": action_pred}
        if not (self.obs_as_local_cond or self.obs_as_global_cond):
            obs_pred = self.normalizer["obs"].unnormalize(nsample[..., Da:])
            result["action_obs_pred"] = obs_pred[:, action_slice]
            result["obs_pred"] = obs_pred
        return result

    # ========= training ============
    def set_normalizer(self, normalizer: LinearNormalizer) -> None:
        self.normalizer.load_state_dict(normalizer.state_dict())

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
                trajectory = action[:, self._action_slice()]
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
            {"local_cond": local_cond, "global_cond": global_cond},
            noise=noise,
            timesteps=timesteps,
        )
