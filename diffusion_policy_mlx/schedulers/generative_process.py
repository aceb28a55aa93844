"""The interface a diffusion policy trains and samples through: a generative process.

A process owns the time axis and the corruption of clean trajectories: it draws training times,
builds the model's noisy input and its regression target, lists the times a sampling loop
visits, and takes one sampling step. The policy owns the conditioning and the denoiser. DDPM
and DDIM (:mod:`.ddpm`, :mod:`.ddim`) implement it with diffusers' numerics; a new process
(flow matching, ...) is one more class with these methods, named by a config's
``policy.noise_scheduler._target_`` (``docs/ARCHITECTURE.md`` shows one).

Randomness is drawn by the caller and passed in (training noise, the sampling step's
``variance_noise``), or through an explicit ``key``, so a process needs no knowledge of batch
splits or data-parallel ranks.
"""

from typing import Any, Protocol

import mlx.core as mx

from diffusion_policy_mlx.schedulers.scheduling_utils import SchedulerOutput


class GenerativeProcess(Protocol):
    """What :mod:`~diffusion_policy_mlx.policy.diffusion_common` calls; shapes are those of
    the trajectory being generated, ``(B, T, D)``, and of its training times, ``(B,)``."""

    @property
    def default_inference_steps(self) -> int:
        """How many sampling steps a policy takes when its config does not say."""
        ...

    def sample_train_times(self, shape: tuple[int, ...], key: mx.array | None = None) -> mx.array:
        """Training times of ``shape`` (one per sample), from ``key`` or MLX's generator."""
        ...

    def make_train_input(self, x0: mx.array, noise: mx.array, t: mx.array) -> mx.array:
        """The model's input at times ``t``: clean ``x0`` corrupted by standard-normal
        ``noise``."""
        ...

    def target(self, x0: mx.array, noise: mx.array, t: mx.array) -> mx.array:
        """What the model regresses on that input."""
        ...

    def sampling_timesteps(self, num_inference_steps: int) -> list[int | float]:
        """The times a sampling loop of ``num_inference_steps`` steps visits, in order; also
        makes :meth:`step` take steps of that size."""
        ...

    def step(
        self,
        model_output: mx.array,
        timestep: Any,
        sample: mx.array,
        variance_noise: mx.array | None = None,
        **kwargs: Any,
    ) -> SchedulerOutput:
        """One sampling step from ``sample`` at ``timestep`` to the next time, given the
        model's output there; ``variance_noise`` (standard normal, shaped like ``sample``) is
        the step's randomness."""
        ...
