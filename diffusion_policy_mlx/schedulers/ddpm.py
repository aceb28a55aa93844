"""Denoising diffusion probabilistic models (Ho et al. 2020) scheduler, diffusers-compatible.

Constructor kwargs, ``config``, ``set_timesteps``, ``step`` and ``add_noise`` follow
``diffusers.DDPMScheduler`` 0.11.1, the version upstream pins. Per-timestep coefficients are
precomputed tables, so ``step`` is pure array code that ``mx.compile`` traces once for any
timestep given as an array.

One deliberate difference: with ``set_timesteps(n < num_train_timesteps)`` a step goes from t to
t - N // n with that jump's posterior (as newer diffusers do); 0.11.1 always stepped to t - 1,
which is wrong for skipped steps. Upstream samples DDPM with all N steps, where both agree.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import mlx.core as mx
import numpy as np

from diffusion_policy_mlx.schedulers.scheduling_utils import (
    BaseScheduler,
    SchedulerOutput,
    Timestep,
    check_prediction_type,
    gather,
    spaced_timesteps,
)

VarianceType = Literal["fixed_small", "fixed_small_log", "fixed_large"]
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")


@dataclass(frozen=True)
class DDPMSchedulerConfig:
    """The constructor arguments, read as ``scheduler.config.<name>`` like diffusers' config."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    variance_type: str = "fixed_small"
    clip_sample: bool = True
    prediction_type: str = "epsilon"


class DDPMScheduler(BaseScheduler):
    """Ancestral DDPM sampling and forward noising over ``num_train_timesteps`` steps.

    Samples may have any shape ``(B, ...)``, e.g. ``(B, T, Da)`` action trajectories.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | np.ndarray | None = None,
        variance_type: VarianceType = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
    ):
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(
                f"variance_type {variance_type!r} is unknown: use one of {VARIANCE_TYPES}"
            )
        check_prediction_type(prediction_type)
        self.config = DDPMSchedulerConfig(
            num_train_timesteps=int(num_train_timesteps),
            beta_start=float(beta_start),
            beta_end=float(beta_end),
            beta_schedule=beta_schedule,
            trained_betas=None if trained_betas is None else tuple(float(b) for b in trained_betas),
            variance_type=variance_type,
            clip_sample=bool(clip_sample),
            prediction_type=prediction_type,
        )
        self._init_schedule()
        self._set_step_tables(1)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Sample with ``num_inference_steps`` evenly spaced timesteps (``self.timesteps``)."""
        n_train = self.config.num_train_timesteps
        self.timesteps = mx.array(spaced_timesteps(n_train, num_inference_steps))
        self.num_inference_steps = num_inference_steps
        self._set_step_tables(n_train // num_inference_steps)

    def _set_step_tables(self, step_ratio: int) -> None:
        """Per-timestep coefficients of the step ``t -> t - step_ratio``, all ``(N,)`` float32."""
        betas, alphas, acp = self.np_betas, self.np_alphas, self.np_alphas_cumprod
        one = np.float32(1.0)
        prev = np.arange(acp.shape[0]) - step_ratio
        acp_prev = np.where(prev >= 0, acp[np.maximum(prev, 0)], one).astype(np.float32)
        beta_prod = one - acp
        beta_prod_prev = one - acp_prev
        if step_ratio == 1:
            # diffusers 0.11.1 uses the stored betas; re-deriving them from alphas_cumprod
            # loses float32 precision at small t.
            beta_t, alpha_t = betas, alphas
        else:
            alpha_t = acp / acp_prev
            beta_t = one - alpha_t
        variance = beta_prod_prev / beta_prod * beta_t
        clamped = np.maximum(variance, np.float32(1e-20))
        if self.config.variance_type == "fixed_small":
            std = np.sqrt(clamped)
        elif self.config.variance_type == "fixed_small_log":
            std = np.exp(np.float32(0.5) * np.log(clamped))
        else:
            std = np.sqrt(beta_t)
        std = np.where(np.arange(acp.shape[0]) > 0, std, np.float32(0.0)).astype(np.float32)

        self.variance = mx.array(clamped)
        self.step_std = mx.array(std)
        self.pred_original_sample_coeff = mx.array(np.sqrt(acp_prev) * beta_t / beta_prod)
        self.current_sample_coeff = mx.array(np.sqrt(alpha_t) * beta_prod_prev / beta_prod)
        self.sqrt_beta_prod = mx.array(np.sqrt(beta_prod))

    def step(
        self,
        model_output: mx.array,
        timestep: Timestep,
        sample: mx.array,
        key: mx.array | None = None,
        variance_noise: mx.array | None = None,
        eta: float = 0.0,
    ) -> SchedulerOutput:
        """One ancestral step x_t -> x_{t-1}.

        Args:
            model_output: the denoiser's prediction, shaped like ``sample`` (B, ...).
            timestep: t as a Python int, a 0-d array, or a (B,) array.
            sample: x_t, (B, ...).
            key: PRNG key for the added noise; MLX's global generator when None.
            variance_noise: explicit standard-normal noise (B, ...) to use instead of drawing.
            eta: accepted so one call serves DDPM and DDIM; DDPM's noise level is fixed by
                ``variance_type``, so it is ignored.

        No noise is added at t = 0. Nothing is read back from the device.
        """
        del eta
        ndim = sample.ndim
        if self.config.prediction_type == "epsilon":
            sqrt_acp = gather(self.sqrt_alphas_cumprod, timestep, ndim)
            sqrt_beta_prod = gather(self.sqrt_beta_prod, timestep, ndim)
            pred_original_sample = (sample - sqrt_beta_prod * model_output) / sqrt_acp
        elif self.config.prediction_type == "sample":
            pred_original_sample = model_output
        else:
            sqrt_acp = gather(self.sqrt_alphas_cumprod, timestep, ndim)
            sqrt_beta_prod = gather(self.sqrt_beta_prod, timestep, ndim)
            pred_original_sample = sqrt_acp * sample - sqrt_beta_prod * model_output
        if self.config.clip_sample:
            pred_original_sample = mx.clip(pred_original_sample, -1, 1)

        x0_coeff = gather(self.pred_original_sample_coeff, timestep, ndim)
        xt_coeff = gather(self.current_sample_coeff, timestep, ndim)
        prev_sample = x0_coeff * pred_original_sample + xt_coeff * sample

        if variance_noise is None:
            variance_noise = mx.random.normal(sample.shape, dtype=sample.dtype, key=key)
        # step_std is 0 at t = 0, which is how "no noise at the last step" stays branch-free.
        prev_sample = prev_sample + gather(self.step_std, timestep, ndim) * variance_noise
        return SchedulerOutput(prev_sample, pred_original_sample)
