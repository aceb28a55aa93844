"""What the five diffusion policies share; each of them only builds its conditioning.

A diffusion policy holds a denoiser (``model``), a generative process (``noise_scheduler``, the
upstream name: DDPM, DDIM or any :class:`~diffusion_policy_mlx.schedulers.GenerativeProcess`),
the inpainting mask generator, the normalizer and the compiled-step cache. A subclass turns
normalized observations into the trajectory to denoise, its inpainting condition and the
model's keyword arguments (``local_cond``/``global_cond`` for the U-Net, ``cond`` for the
transformer); sampling, the loss and the action window are here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import mlx.core as mx
import mlx.nn as nn

from diffusion_policy_mlx.common.batch_split import BatchSplit
from diffusion_policy_mlx.model.common.normalizer import LinearNormalizer
from diffusion_policy_mlx.model.diffusion.mask_generator import LowdimMaskGenerator
from diffusion_policy_mlx.policy.base_policy import BasePolicy
from diffusion_policy_mlx.policy.diffusion_common import (
    CompiledStepCache,
    SamplingWeights,
    conditional_sample,
    diffusion_loss,
)
from diffusion_policy_mlx.schedulers.generative_process import GenerativeProcess


class DiffusionPolicyBase(BasePolicy):
    """A policy that samples actions by iterative denoising.

    ``mask_obs_dim``: observation features the trajectory carries after the actions (0 when
    the observations condition the model instead); the mask generator marks the first
    ``n_obs_steps`` of them as known. ``num_inference_steps`` defaults to the process's
    :attr:`~GenerativeProcess.default_inference_steps`; extra ``kwargs`` go to
    ``noise_scheduler.step``. ``obs_encoder`` (image policies) is registered before ``model``.
    """

    # the model's keyword arguments among conditional_sample's (the rest go to the step)
    model_kwarg_names: ClassVar[tuple[str, ...]] = ()
    pred_action_steps_only: bool = False

    def __init__(
        self,
        model: nn.Module,
        noise_scheduler: GenerativeProcess,
        *,
        horizon: int,
        action_dim: int,
        n_action_steps: int,
        n_obs_steps: int,
        mask_obs_dim: int,
        num_inference_steps: int | None,
        kwargs: Mapping[str, Any],
        obs_encoder: nn.Module | None = None,
    ):
        super().__init__()
        if obs_encoder is not None:
            self.obs_encoder = obs_encoder
        self.model = model
        self.noise_scheduler = noise_scheduler
        self.mask_generator = LowdimMaskGenerator(
            action_dim=action_dim,
            obs_dim=mask_obs_dim,
            max_n_obs_steps=n_obs_steps,
            fix_obs_steps=True,
            action_visible=False,
        )
        self.normalizer = LinearNormalizer()
        self.horizon = horizon
        self.action_dim = action_dim
        self.n_action_steps = n_action_steps
        self.n_obs_steps = n_obs_steps
        # Set on the instance, not as a module item: step options are not parameters.
        object.__setattr__(self, "kwargs", dict(kwargs))
        if num_inference_steps is None:
            num_inference_steps = noise_scheduler.default_inference_steps
        self.num_inference_steps = num_inference_steps
        self.compile_sampling = True
        # ConditionalUnet1D's FiLM features computed ahead of the sampling loop
        self.precompute_film = True
        self.step_cache = CompiledStepCache()
        self.sampling_weights: SamplingWeights | None = None

    def set_execution(self, batch_split: BatchSplit, weights: SamplingWeights | None) -> None:
        """How batches are laid out (accel's CPU streams) and the low-precision weights the
        compiled sampling loop reads (None: the model's own)."""
        self.batch_split = batch_split
        self.sampling_weights = weights

    # ========= inference ============
    def conditional_sample(
        self,
        condition_data: mx.array,
        condition_mask: mx.array,
        key: mx.array | None = None,
        **kwargs: Any,
    ) -> mx.array:
        """Reverse diffusion from noise to a (B, T, D) trajectory that keeps ``condition_data``
        where ``condition_mask`` is set. ``kwargs`` are the model's (:attr:`model_kwarg_names`)
        and ``noise_scheduler.step``'s."""
        model_kwargs = {name: kwargs.pop(name, None) for name in self.model_kwarg_names}
        return conditional_sample(
            self.model,
            self.noise_scheduler,
            self.num_inference_steps,
            condition_data,
            condition_mask,
            model_kwargs,
            key=key,
            step_cache=self.step_cache if self.compile_sampling else None,
            batch_split=self.batch_split,
            weights=self.sampling_weights,
            precompute_film=self.precompute_film,
            **kwargs,
        )

    @property
    def action_start(self) -> int:
        """The trajectory step of the first action executed: the last observed step."""
        return self.n_obs_steps - 1

    def action_window(self, trajectory: mx.array) -> mx.array:
        """The ``n_action_steps`` executed steps of a (B, T, ...) trajectory."""
        start = self.action_start
        return trajectory[:, start : start + self.n_action_steps]

    def sample_actions(
        self,
        condition_data: mx.array,
        condition_mask: mx.array,
        model_kwargs: Mapping[str, mx.array | None],
        key: mx.array | None,
    ) -> tuple[mx.array, dict[str, mx.array]]:
        """Sample a normalized trajectory and unnormalize its actions: returns the trajectory
        (B, T, D) and ``{"action": (B, Ta, Da), "action_pred": (B, T, Da)}``."""
        nsample = self.conditional_sample(
            condition_data, condition_mask, key=key, **model_kwargs, **self.kwargs
        )
        action_pred = self.normalizer["action"].unnormalize(nsample[..., : self.action_dim])
        action = action_pred if self.pred_action_steps_only else self.action_window(action_pred)
        return nsample, {"action": action, "action_pred": action_pred}

    def add_obs_prediction(self, nsample: mx.array, result: dict[str, mx.array]) -> None:
        """For a trajectory (B, T, Da + Do) that carries the observations after the actions:
        add their prediction ``obs_pred`` (B, T, Do) and its executed window
        ``action_obs_pred`` (B, Ta, Do) to ``result``."""
        obs_pred = self.normalizer["obs"].unnormalize(nsample[..., self.action_dim :])
        result["action_obs_pred"] = self.action_window(obs_pred)
        result["obs_pred"] = obs_pred

    def action_error_pair(
        self, result: dict[str, mx.array], action: mx.array
    ) -> tuple[mx.array, mx.array]:
        if self.pred_action_steps_only:
            return result["action"], self.action_window(action)
        return result["action_pred"], action

    # ========= training ============
    def set_normalizer(self, normalizer: LinearNormalizer) -> None:
        self.normalizer.load_state_dict(normalizer.state_dict())

    def denoising_loss(
        self,
        trajectory: mx.array,
        model_kwargs: Mapping[str, mx.array | None],
        condition_data: mx.array | None = None,
        noise: mx.array | None = None,
        timesteps: mx.array | None = None,
    ) -> mx.array:
        """The diffusion loss of ``trajectory`` (B, T, D), whose first ``n_obs_steps``
        observation entries are inpainted from ``condition_data`` (default: ``trajectory``)
        unless only the executed actions are denoised."""
        if self.pred_action_steps_only:
            condition_mask = mx.zeros(trajectory.shape, mx.bool_)
        else:
            condition_mask = self.mask_generator(trajectory.shape)
        return diffusion_loss(
            self.model,
            self.noise_scheduler,
            trajectory,
            condition_mask,
            dict(model_kwargs),
            condition_data=condition_data,
            noise=noise,
            timesteps=timesteps,
        )
