"""What the five diffusion policies share: the denoising loop and the masked diffusion loss.

Upstream repeats ``conditional_sample`` and the body of ``compute_loss`` in every policy; here they
are written once. The model is called as ``model(trajectory, timesteps, **model_kwargs)``, which
covers both ``ConditionalUnet1D(..., local_cond=, global_cond=)`` and
``TransformerForDiffusion(..., cond=)``.
"""

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Protocol

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

from diffusion_policy_mlx.accel import cpu_streams, few_row_matmul
from diffusion_policy_mlx.common.distributed import current_shard, sharded_draw
from diffusion_policy_mlx.model.common.normalizer import LinearNormalizer
from diffusion_policy_mlx.model.diffusion.conditional_unet1d import ConditionalUnet1D
from diffusion_policy_mlx.model.diffusion.mask_generator import LowdimMaskGenerator

# conditional_sample computes a ConditionalUnet1D's FiLM features ahead of the loop; False is
# the other side of benchmarks/bench_film_tables.py.
PRECOMPUTE_FILM = True
# Largest value ``mx.random.randint`` draws for a fresh key; any uint32 pair is a valid key.
_KEY_HIGH = 2**31 - 1


class NoiseScheduler(Protocol):
    """The part of the diffusers-style scheduler API the policies use."""

    config: Any
    timesteps: Any

    def set_timesteps(self, num_inference_steps: int) -> None: ...

    def step(
        self, model_output: mx.array, timestep: Any, sample: mx.array, **kwargs: Any
    ) -> Any: ...

    def add_noise(
        self, original_samples: mx.array, noise: mx.array, timesteps: mx.array
    ) -> mx.array: ...


def action_dim_from_shape_meta(shape_meta: dict, policy_name: str) -> int:
    """``shape_meta["action"]["shape"]`` must be one dimension: the action vector's size."""
    action_shape = tuple(shape_meta["action"]["shape"])
    if len(action_shape) != 1:
        raise ValueError(
            f"{policy_name}: shape_meta.action.shape must be [action_dim]; got {list(action_shape)}"
        )
    return action_shape[0]


def random_key() -> mx.array:
    """A fresh PRNG key drawn from MLX's global generator (seeded by ``mx.random.seed``)."""
    return mx.random.randint(0, _KEY_HIGH, (2,)).astype(mx.uint32)


def encode_obs_steps(
    obs_encoder: Callable[[dict[str, mx.array]], mx.array],
    nobs: Mapping[str, mx.array],
    n_steps: int | None = None,
) -> mx.array:
    """Encode the first ``n_steps`` steps (all when None) of normalized observations
    ``{key: (B, T, ...)}`` in one encoder call over B * n_steps samples -> (B, n_steps, Do)."""
    B = next(iter(nobs.values())).shape[0]
    flat = {key: x[:, :n_steps].reshape(-1, *x.shape[2:]) for key, x in nobs.items()}
    features = obs_encoder(flat)
    return features.reshape(B, -1, features.shape[-1])


def obs_inpainting_condition(
    nobs_features: mx.array, horizon: int, action_dim: int
) -> tuple[mx.array, mx.array]:
    """Condition data and mask for sampling an (action, obs) trajectory whose first To obs
    entries are known: ``nobs_features`` (B, To, Do) -> both (B, horizon, Da + Do)."""
    B, To, Do = nobs_features.shape
    dtype = nobs_features.dtype
    obs_part = mx.concatenate([nobs_features, mx.zeros((B, horizon - To, Do), dtype)], axis=1)
    condition_data = mx.concatenate([mx.zeros((B, horizon, action_dim), dtype), obs_part], axis=-1)
    is_obs_step = (mx.arange(horizon) < To)[:, None]
    is_obs_dim = mx.arange(action_dim + Do) >= action_dim
    condition_mask = mx.broadcast_to(is_obs_step & is_obs_dim, condition_data.shape)
    return condition_data, condition_mask


def denoise_step(
    model: nn.Module,
    scheduler: NoiseScheduler,
    step_kwargs: Mapping[str, Any],
    trajectory: mx.array,
    t: mx.array,
    key: mx.array,
    condition_data: mx.array,
    condition_mask: mx.array,
    model_kwargs: dict[str, mx.array],
) -> mx.array:
    """One reverse step x_t -> x_{t-1}: inpaint the conditioned entries, predict, step.

    ``trajectory``, ``condition_data``: (B, T, D); ``condition_mask``: (B, T, D) bool; ``t``: 0-d
    int array; ``key``: the PRNG key of the scheduler's variance noise.
    """
    trajectory = mx.where(condition_mask, condition_data, trajectory)
    timesteps = mx.broadcast_to(t, (trajectory.shape[0],))
    model_output = model(trajectory, timesteps, **model_kwargs)
    return scheduler.step(model_output, t, trajectory, key=key, **step_kwargs).prev_sample


class CompiledStepCache:
    """The ``mx.compile``d :func:`denoise_step` of one policy, rebuilt when its inputs change.

    The compiled function closes over the model, the scheduler (whose tables and
    ``num_inference_steps`` it reads at trace time), the scheduler kwargs, the model's
    train/eval mode and the batch shard being sampled (a CPU stream's chunk), so each
    combination gets its own entry. The model's arrays are declared as
    compile inputs, so updated weights (training, EMA, checkpoint loads) are picked up without
    retracing. A deep copy (the EMA policy) starts empty, because the copied entries would still
    call the original model. ``weights`` holds the model's low-precision convolution weights for
    the CPU kernels (``DP_MLX_CPU_WEIGHTS=float16`` or ``bfloat16``), also a compile input.
    """

    def __init__(self) -> None:
        self.entries: dict[tuple, tuple[nn.Module, NoiseScheduler, Callable]] = {}
        self.weights = few_row_matmul.InferenceWeights()

    def get(
        self,
        model: nn.Module,
        scheduler: NoiseScheduler,
        num_inference_steps: int,
        step_kwargs: Mapping[str, Any],
    ) -> Callable:
        signature = (
            id(model),
            id(scheduler),
            num_inference_steps,
            model.training,
            tuple(sorted(step_kwargs.items())),
            # a chunk's rows of the batch's noise are chosen at trace time
            current_shard(),
            len(self.weights.arrays),
            str(self.weights.dtype),
        )
        entry = self.entries.get(signature)
        if entry is None or entry[0] is not model or entry[1] is not scheduler:
            fn = mx.compile(
                partial(denoise_step, model, scheduler, dict(step_kwargs)),
                # The random state travels through so dropout in train mode stays random.
                inputs=[model.state, self.weights.arrays, mx.random.state],
                outputs=[mx.random.state],
            )
            entry = (model, scheduler, fn)
            self.entries[signature] = entry
        return entry[2]

    def __deepcopy__(self, memo: dict) -> "CompiledStepCache":
        return CompiledStepCache()


def init_diffusion_policy(
    policy: nn.Module,
    noise_scheduler: NoiseScheduler,
    *,
    horizon: int,
    action_dim: int,
    n_action_steps: int,
    n_obs_steps: int,
    mask_obs_dim: int,
    num_inference_steps: int | None,
    kwargs: Mapping[str, Any],
) -> None:
    """Set what every diffusion policy holds the same way: the scheduler, the inpainting mask
    generator over ``action_dim + mask_obs_dim`` features (``mask_obs_dim=0`` when observations
    condition the model instead), an empty normalizer, the horizon and step counts,
    ``noise_scheduler.step`` options (``kwargs``), ``num_inference_steps`` (default: the
    training timesteps) and the compiled-step cache of :func:`conditional_sample`."""
    policy.noise_scheduler = noise_scheduler
    policy.mask_generator = LowdimMaskGenerator(
        action_dim=action_dim,
        obs_dim=mask_obs_dim,
        max_n_obs_steps=n_obs_steps,
        fix_obs_steps=True,
        action_visible=False,
    )
    policy.normalizer = LinearNormalizer()
    policy.horizon = horizon
    policy.action_dim = action_dim
    policy.n_action_steps = n_action_steps
    policy.n_obs_steps = n_obs_steps
    # Set on the instance, not as a module item: scheduler options are not parameters.
    object.__setattr__(policy, "kwargs", dict(kwargs))
    if num_inference_steps is None:
        num_inference_steps = noise_scheduler.config.num_train_timesteps
    policy.num_inference_steps = num_inference_steps
    policy.compile_sampling = True
    policy.step_cache = CompiledStepCache()


def conditional_sample(
    model: nn.Module,
    scheduler: NoiseScheduler,
    num_inference_steps: int,
    condition_data: mx.array,
    condition_mask: mx.array,
    model_kwargs: dict[str, mx.array | None],
    key: mx.array | None = None,
    step_cache: CompiledStepCache | None = None,
    **step_kwargs: Any,
) -> mx.array:
    """Sample (B, T, D) trajectories by reverse diffusion, keeping ``condition_data`` where
    ``condition_mask`` is set (inpainting), as upstream's ``conditional_sample``.

    Randomness comes from ``key`` (split into the initial noise and one key per step) or, when it
    is None, from a key drawn from MLX's global generator. With ``step_cache`` every step runs
    the compiled :func:`denoise_step` (with the cache's low-precision weights for the CPU
    kernel, when ``DP_MLX_CPU_WEIGHTS`` asks for them); without it the same function runs
    eagerly, on the float32 weights. A
    :class:`ConditionalUnet1D` gets every step's FiLM features computed before the loop
    (:meth:`ConditionalUnet1D.film_tables`). On the CPU the batch's rows are split over
    :mod:`~diffusion_policy_mlx.accel.cpu_streams`, with the same result. Nothing is
    evaluated here: the result is a lazy array over the whole loop.
    """
    if key is None:
        key = random_key()
    scheduler.set_timesteps(num_inference_steps)
    timesteps = np.asarray(scheduler.timesteps).tolist()
    keys = mx.random.split(key, len(timesteps) + 1)
    conds = {k: v for k, v in model_kwargs.items() if v is not None}
    film_time = None
    if PRECOMPUTE_FILM and isinstance(model, ConditionalUnet1D):
        # every step's FiLM features in one go, ahead of the loop (ConditionalUnet1D.film_tables)
        film_time, film_cond = model.film_tables(
            mx.array(timesteps), conds.pop("global_cond", None)
        )
        if film_cond is not None:
            conds["film_cond"] = film_cond
    rows = {
        "trajectory": mx.random.normal(
            condition_data.shape, dtype=condition_data.dtype, key=keys[0]
        ),
        "condition_data": condition_data,
        "condition_mask": condition_mask,
        "conds": conds,
    }

    weights = None
    if step_cache is not None:
        weights = step_cache.weights
        weights.refresh(model)

    def denoise(rows: dict) -> mx.array:
        if step_cache is None:
            step = partial(denoise_step, model, scheduler, step_kwargs)
        else:
            step = step_cache.get(model, scheduler, num_inference_steps, step_kwargs)
        trajectory = rows["trajectory"]
        for i, t in enumerate(timesteps):
            step_conds = (
                rows["conds"] if film_time is None else {**rows["conds"], "film_time": film_time[i]}
            )
            # the first call traces the step: its convolutions look their weights up here
            with few_row_matmul.using(weights):
                trajectory = step(
                    trajectory,
                    mx.array(t),
                    keys[i + 1],
                    rows["condition_data"],
                    rows["condition_mask"],
                    step_conds,
                )
        # The last step's output is not inpainted inside the loop.
        return mx.where(rows["condition_mask"], rows["condition_data"], trajectory)

    cpu_streams.use_blas_threads(condition_data.shape[0])
    chunks = cpu_streams.map_chunks(denoise, rows)
    if chunks is None:
        return denoise(rows)
    return mx.concatenate([sample for _, sample in chunks])


def diffusion_loss(
    model: nn.Module,
    scheduler: NoiseScheduler,
    trajectory: mx.array,
    condition_mask: mx.array,
    model_kwargs: dict[str, mx.array | None],
    condition_data: mx.array | None = None,
    noise: mx.array | None = None,
    timesteps: mx.array | None = None,
) -> mx.array:
    """Upstream's denoising loss: noise ``trajectory`` (B, T, D) at uniformly drawn timesteps,
    inpaint ``condition_data`` (default: ``trajectory``) where ``condition_mask`` is set, and
    return the MSE between the model's prediction and its target (the noise for ``epsilon``, the
    clean trajectory for ``sample``) over the entries NOT conditioned on.

    ``noise`` (B, T, D) and ``timesteps`` (B,) may be given; otherwise they are drawn from MLX's
    global generator. Pure array code: safe inside ``nn.value_and_grad`` and ``mx.compile``.
    """
    prediction_type = scheduler.config.prediction_type
    if prediction_type not in ("epsilon", "sample"):
        raise ValueError(
            f"noise_scheduler.prediction_type={prediction_type!r} is not supported by the "
            "diffusion policies; use 'epsilon' or 'sample'"
        )
    if condition_data is None:
        condition_data = trajectory
    batch_size = trajectory.shape[0]
    # sharded_draw: in data-parallel training each rank draws what a 1-process run would
    if noise is None:
        noise = sharded_draw(
            lambda shape: mx.random.normal(shape, dtype=trajectory.dtype), trajectory.shape
        )
    if timesteps is None:
        n_train = scheduler.config.num_train_timesteps
        timesteps = sharded_draw(lambda shape: mx.random.randint(0, n_train, shape), (batch_size,))

    noisy_trajectory = scheduler.add_noise(trajectory, noise, timesteps)
    noisy_trajectory = mx.where(condition_mask, condition_data, noisy_trajectory)
    conds = {k: v for k, v in model_kwargs.items() if v is not None}
    pred = model(noisy_trajectory, timesteps, **conds)

    target = noise if prediction_type == "epsilon" else trajectory
    loss_mask = mx.logical_not(condition_mask).astype(pred.dtype)
    # Every sample has the same number of entries, so upstream's per-sample mean followed by
    # the batch mean equals one mean over everything.
    return mx.mean(mx.square(pred - target) * loss_mask)


def grouped_adamw(
    module: nn.Module,
    weight_decays: Mapping[str, float],
    learning_rate: float,
    betas: Sequence[float],
) -> optim.MultiOptimizer:
    """AdamW giving each trainable parameter of ``module`` its own weight decay, like a torch
    AdamW over parameter groups.

    ``weight_decays`` maps every trainable parameter path of ``module`` (``"model.head.weight"``,
    as ``optimizer.update(module, grads)`` sees them) to its decay; one bias-corrected AdamW runs
    per distinct decay value, behind an ``mlx.optimizers.MultiOptimizer``.
    """
    trainable = {path for path, _ in tree_flatten(module.trainable_parameters())}
    if set(weight_decays) != trainable:
        missing = sorted(trainable - set(weight_decays))
        unknown = sorted(set(weight_decays) - trainable)
        raise ValueError(
            f"{type(module).__name__} optimizer groups do not cover its trainable parameters: "
            f"without a group {missing}, not trainable {unknown}"
        )
    paths_by_decay: dict[float, set[str]] = {}
    for path, decay in weight_decays.items():
        paths_by_decay.setdefault(float(decay), set()).add(path)
    decays = sorted(paths_by_decay, reverse=True)
    optimizers = [
        optim.AdamW(
            learning_rate=learning_rate,
            betas=list(betas),
            weight_decay=decay,
            bias_correction=True,
        )
        for decay in decays
    ]
    # The last optimizer takes whatever no filter claimed: exactly its own group.
    filters = [partial(_path_in, frozenset(paths_by_decay[decay])) for decay in decays[:-1]]
    return optim.MultiOptimizer(optimizers, filters)


def _path_in(paths: frozenset[str], path: str, _: mx.array) -> bool:
    return path in paths
