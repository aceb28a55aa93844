"""Denoising diffusion implicit models (Song et al. 2021) scheduler, diffusers-compatible.

Constructor kwargs, ``config``, ``set_timesteps``, ``step`` and ``add_noise`` follow
``diffusers.DDIMScheduler`` 0.11.1, the version upstream pins. Per-timestep coefficients are
precomputed tables, so ``step`` is pure array code that ``mx.compile`` traces once for any
timestep given as an array.

One deliberate difference: for ``prediction_type='sample'`` the direction term uses the noise
implied by the predicted x0 (as newer diffusers do); 0.11.1 used the x0 prediction itself
there. ``epsilon`` (upstream's DDIM configs) is unaffected and matches 0.11.1.
"""

from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class DDIMSchedulerConfig:
    """The constructor arguments, read as ``scheduler.config.<name>`` like diffusers' config."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    clip_sample: bool = True
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"


class DDIMScheduler(BaseScheduler):
    """DDIM sampling (deterministic at ``eta=0``) and forward noising.

    Samples may have any shape ``(B, ...)``, e.g. ``(B, T, Da)`` action trajectories.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | np.ndarray | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
    ):
        check_prediction_type(prediction_type)
        self.config = DDIMSchedulerConfig(
            num_train_timesteps=int(num_train_timesteps),
            beta_start=float(beta_start),
            beta_end=float(beta_end),
            beta_schedule=beta_schedule,
            trained_betas=None if trained_betas is None else tuple(float(b) for b in trained_betas),
            clip_sample=bool(clip_sample),
            set_alpha_to_one=bool(set_alpha_to_one),
            steps_offset=int(steps_offset),
            prediction_type=prediction_type,
        )
        self._init_schedule()
        # The step that lands before t = 0 uses this in place of alphas_cumprod[-1].
        self.final_alpha_cumprod = (
            np.float32(1.0) if set_alpha_to_one else self.np_alphas_cumprod[0]
        )
        self._set_step_tables(1)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Sample with ``num_inference_steps`` timesteps ``N // n`` apart, plus ``steps_offset``.

        With N = 100 and n = 16 the timesteps are 90, 84, ..., 0 (never 99), as in diffusers.
        """
        n_train = self.config.num_train_timesteps
        timesteps = spaced_timesteps(n_train, num_inference_steps) + self.config.steps_offset
        if timesteps[0] >= n_train:
            raise ValueError(
                f"steps_offset={self.config.steps_offset} pushes timestep {timesteps[0]} past "
                f"num_train_timesteps={n_train}"
            )
        self.timesteps = mx.array(timesteps)
        self.num_inference_steps = num_inference_steps
        self._set_step_tables(n_train // num_inference_steps)

    def _set_step_tables(self, step_ratio: int) -> None:
        """Coefficients of the step ``t -> t - step_ratio`` for every t, all ``(N,)`` float32."""
        acp = self.np_alphas_cumprod
        one = np.float32(1.0)
        prev = np.arange(acp.shape[0]) - step_ratio
        acp_prev = np.where(prev >= 0, acp[np.maximum(prev, 0)], self.final_alpha_cumprod)
        acp_prev = acp_prev.astype(np.float32)
        beta_prod = one - acp
        beta_prod_prev = one - acp_prev
        self.alphas_cumprod_prev = mx.array(acp_prev)
        self.sqrt_alphas_cumprod_prev = mx.array(np.sqrt(acp_prev))
        self.sqrt_beta_prod = mx.array(np.sqrt(beta_prod))
        self.variance = mx.array((beta_prod_prev / beta_prod) * (one - acp / acp_prev))

    def step(
        self,
        model_output: mx.array,
        timestep: Timestep,
        sample: mx.array,
        key: mx.array | None = None,
        variance_noise: mx.array | None = None,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
    ) -> SchedulerOutput:
        """One DDIM step x_t -> x_{t - N/n}.

        Args:
            model_output: the denoiser's prediction, shaped like ``sample`` (B, ...).
            timestep: t as a Python int, a 0-d array, or a (B,) array.
            sample: x_t, (B, ...).
            key: PRNG key for the noise added when ``eta > 0``; MLX's global generator if None.
            variance_noise: explicit standard-normal noise (B, ...) to use when ``eta > 0``.
            eta: weight of the stochastic part (0: deterministic DDIM, 1: DDPM-like).
            use_clipped_model_output: re-derive the noise from the clipped x_0 estimate.
        """
        ndim = sample.ndim
        sqrt_acp = gather(self.sqrt_alphas_cumprod, timestep, ndim)
        sqrt_beta_prod = gather(self.sqrt_beta_prod, timestep, ndim)
        prediction_type = self.config.prediction_type
        if prediction_type == "epsilon":
            pred_original_sample = (sample - sqrt_beta_prod * model_output) / sqrt_acp
            pred_epsilon = model_output
        elif prediction_type == "sample":
            pred_original_sample = model_output
            pred_epsilon = (sample - sqrt_acp * pred_original_sample) / sqrt_beta_prod
        else:
            pred_original_sample = sqrt_acp * sample - sqrt_beta_prod * model_output
            pred_epsilon = sqrt_acp * model_output + sqrt_beta_prod * sample
        if self.config.clip_sample:
            pred_original_sample = mx.clip(pred_original_sample, -1, 1)
        if use_clipped_model_output:
            pred_epsilon = (sample - sqrt_acp * pred_original_sample) / sqrt_beta_prod

        acp_prev = gather(self.alphas_cumprod_prev, timestep, ndim)
        std_dev_t = eta * mx.sqrt(gather(self.variance, timestep, ndim))
        direction = mx.sqrt(1 - acp_prev - std_dev_t**2) * pred_epsilon
        prev_sample = gather(self.sqrt_alphas_cumprod_prev, timestep, ndim) * pred_original_sample
        prev_sample = prev_sample + direction
        if eta > 0:
            if variance_noise is None:
                variance_noise = mx.random.normal(sample.shape, dtype=sample.dtype, key=key)
            prev_sample = prev_sample + std_dev_t * variance_noise
        return SchedulerOutput(prev_sample, pred_original_sample)
