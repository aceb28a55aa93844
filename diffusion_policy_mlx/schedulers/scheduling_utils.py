"""What the DDPM and DDIM schedulers share: beta schedules, step outputs, timestep indexing.

Schedule tables are computed once in numpy float32, in the same operation order as diffusers
0.11.1 (upstream's pinned version), so they match its float32 tensors bit for bit.
"""

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import mlx.core as mx
import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")

Timestep = int | mx.array


class SchedulerOutput(NamedTuple):
    """A reverse step's result; both fields have the shape of the sample, e.g. ``(B, T, D)``.

    ``prev_sample``: x_{t-1}. ``pred_original_sample``: the (clipped) x_0 estimate.
    """

    prev_sample: mx.array
    pred_original_sample: mx.array


def betas_for_alpha_bar(num_diffusion_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Betas of the cosine schedule (Nichol & Dhariwal 2021), in float64, capped at ``max_beta``."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    n = num_diffusion_timesteps
    return np.array(
        [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    )


def _linspace_float32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=float32)``: float32 arithmetic, each half
    counted from its own end, so the betas diffusers builds are reproduced exactly."""
    start32, end32 = np.float32(start), np.float32(end)
    step = (end32 - start32) / np.float32(max(steps - 1, 1))
    idx = np.arange(steps)
    head = start32 + step * idx.astype(np.float32)
    tail = end32 - step * (steps - idx - 1).astype(np.float32)
    return np.where(idx < steps // 2, head, tail).astype(np.float32)


def make_betas(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: Sequence[float] | None,
) -> np.ndarray:
    """The float32 ``(num_train_timesteps,)`` betas of a diffusers beta schedule."""
    if trained_betas is not None:
        betas = np.asarray(trained_betas, dtype=np.float32)
        if betas.shape != (num_train_timesteps,):
            raise ValueError(
                f"trained_betas has shape {betas.shape}; it needs num_train_timesteps="
                f"{num_train_timesteps} values"
            )
        return betas
    if beta_schedule == "linear":
        return _linspace_float32(beta_start, beta_end, num_train_timesteps)
    if beta_schedule == "scaled_linear":
        return _linspace_float32(beta_start**0.5, beta_end**0.5, num_train_timesteps) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(num_train_timesteps).astype(np.float32)
    raise ValueError(f"beta_schedule {beta_schedule!r} is unknown: use one of {BETA_SCHEDULES}")


def check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type {prediction_type!r} is unknown: use one of {PREDICTION_TYPES}"
        )


def spaced_timesteps(num_train_timesteps: int, num_inference_steps: int) -> np.ndarray:
    """``num_inference_steps`` timesteps, ``num_train_timesteps // n`` apart, descending to 0."""
    if not 0 < num_inference_steps <= num_train_timesteps:
        raise ValueError(
            f"num_inference_steps={num_inference_steps} must lie in [1, num_train_timesteps="
            f"{num_train_timesteps}]"
        )
    step_ratio = num_train_timesteps // num_inference_steps
    return (np.arange(num_inference_steps) * step_ratio)[::-1].astype(np.int64)


def gather(table: mx.array, timestep: Timestep, ndim: int) -> mx.array:
    """``table[timestep]``, shaped to broadcast against a sample of ``ndim`` dims.

    ``timestep`` is a Python int, a 0-d array (one timestep for the batch) or a ``(B,)`` array
    (one per sample); no value is read on the host, so this traces under ``mx.compile``.
    """
    if isinstance(timestep, int | np.integer):
        if not 0 <= timestep < table.shape[0]:
            raise IndexError(f"timestep {timestep} is outside [0, {table.shape[0]})")
        return table[int(timestep)]
    values = table[timestep]
    if values.ndim == 1:
        values = values.reshape(-1, *([1] * (ndim - 1)))
    return values


class BaseScheduler:
    """The beta schedule, its float32 tables and the forward process of DDPM and DDIM.

    Subclasses set ``config`` and call :meth:`_init_schedule` from their constructor.
    """

    config: Any

    def _init_schedule(self) -> None:
        c = self.config
        betas = make_betas(
            c.num_train_timesteps, c.beta_start, c.beta_end, c.beta_schedule, c.trained_betas
        )
        alphas = np.float32(1.0) - betas
        # torch's CPU cumprod accumulates float32 in float64, rounding each prefix once
        alphas_cumprod = np.cumprod(alphas, dtype=np.float64).astype(np.float32)
        self.np_betas, self.np_alphas, self.np_alphas_cumprod = betas, alphas, alphas_cumprod
        self.betas = mx.array(betas)
        self.alphas = mx.array(alphas)
        self.alphas_cumprod = mx.array(alphas_cumprod)
        self.sqrt_alphas_cumprod = mx.array(np.sqrt(alphas_cumprod))
        self.sqrt_one_minus_alphas_cumprod = mx.array(np.sqrt(np.float32(1.0) - alphas_cumprod))
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = mx.array(np.arange(c.num_train_timesteps)[::-1].copy())

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # ------------------------------------------------------------------------------------------
    # The generative-process interface (generative_process.GenerativeProcess)
    # ------------------------------------------------------------------------------------------

    @property
    def default_inference_steps(self) -> int:
        """Upstream samples with every training timestep unless told otherwise."""
        return self.config.num_train_timesteps

    def sample_train_times(self, shape: tuple[int, ...], key: mx.array | None = None) -> mx.array:
        """Integer timesteps uniform in ``[0, num_train_timesteps)``."""
        return mx.random.randint(0, self.config.num_train_timesteps, shape, key=key)

    def make_train_input(self, x0: mx.array, noise: mx.array, t: mx.array) -> mx.array:
        """The forward process at ``t``: :meth:`add_noise`."""
        return self.add_noise(x0, noise, t)

    def target(self, x0: mx.array, noise: mx.array, t: mx.array) -> mx.array:
        """The noise for ``epsilon`` prediction, the clean sample for ``sample``; upstream's
        policies train no other."""
        prediction_type = self.config.prediction_type
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "sample":
            return x0
        raise ValueError(
            f"noise_scheduler.prediction_type={prediction_type!r} is not supported by the "
            "diffusion policies; use 'epsilon' or 'sample'"
        )

    def sampling_timesteps(self, num_inference_steps: int) -> list[int]:
        """``set_timesteps(num_inference_steps)``, then those timesteps as Python ints."""
        self.set_timesteps(num_inference_steps)
        return np.asarray(self.timesteps).tolist()

    def add_noise(
        self, original_samples: mx.array, noise: mx.array, timesteps: Timestep
    ) -> mx.array:
        """Forward process q(x_t | x_0): ``sqrt(acp[t]) * x0 + sqrt(1 - acp[t]) * noise``.

        ``original_samples``, ``noise``: (B, ...); ``timesteps``: (B,) ints (or one int).
        """
        ndim, dtype = original_samples.ndim, original_samples.dtype
        sqrt_acp = gather(self.sqrt_alphas_cumprod, timesteps, ndim).astype(dtype)
        sqrt_one_minus = gather(self.sqrt_one_minus_alphas_cumprod, timesteps, ndim).astype(dtype)
        return sqrt_acp * original_samples + sqrt_one_minus * noise

    def get_velocity(self, sample: mx.array, noise: mx.array, timesteps: Timestep) -> mx.array:
        """The ``v_prediction`` target ``sqrt(acp[t]) * noise - sqrt(1 - acp[t]) * x0``."""
        ndim, dtype = sample.ndim, sample.dtype
        sqrt_acp = gather(self.sqrt_alphas_cumprod, timesteps, ndim).astype(dtype)
        sqrt_one_minus = gather(self.sqrt_one_minus_alphas_cumprod, timesteps, ndim).astype(dtype)
        return sqrt_acp * noise - sqrt_one_minus * sample
