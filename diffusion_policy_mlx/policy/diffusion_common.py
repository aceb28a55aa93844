"""What the five diffusion policies share: the denoising loop, the masked diffusion loss and
the conditioning helpers.

Upstream repeats ``conditional_sample`` and the body of ``compute_loss`` in every policy; here they
are written once, over any :class:`~diffusion_policy_mlx.schedulers.GenerativeProcess`
(:class:`~.diffusion_policy_base.DiffusionPolicyBase` calls them). The model is called as
``model(trajectory, timesteps, **model_kwargs)``, which covers both
``ConditionalUnet1D(..., local_cond=, global_cond=)`` and ``TransformerForDiffusion(..., cond=)``.
"""

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from functools import partial
from typing import Any, Protocol

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten

from diffusion_policy_mlx.common.batch_split import BatchSplit
from diffusion_policy_mlx.common.distributed import current_shard, sharded_draw
from diffusion_policy_mlx.model.diffusion.conditional_unet1d import ConditionalUnet1D
from diffusion_policy_mlx.schedulers.generative_process import GenerativeProcess

# Largest value ``mx.random.randint`` draws for a fresh key; any uint32 pair is a valid key.
_KEY_HIGH = 2**31 - 1


class SamplingWeights(Protocol):
    """Low-precision copies of a model's weights for the compiled sampling loop (accel's
    ``SamplingWeights``): refreshed before each loop, declared as an input of the compiled step
    and read by the model's layers while it is traced inside :meth:`active`."""

    arrays: dict[str, mx.array]
    signature: tuple

    def refresh(self, model: nn.Module) -> None: ...

    def active(self) -> Any: ...


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


def normalized_lowdim_obs(
    policy: nn.Module, obs_dim: int, obs_dict: Mapping[str, mx.array]
) -> mx.array:
    """``obs_dict["obs"]`` (B, To', Do) normalized by ``policy.normalizer``, after checking that
    it is what a lowdim policy built for ``obs_dim`` features reads."""
    name = type(policy).__name__
    if "obs" not in obs_dict:
        raise KeyError(f"{name}.predict_action needs obs_dict['obs']; got keys {sorted(obs_dict)}")
    if "past_action" in obs_dict:
        raise NotImplementedError("past_action conditioning is not implemented (as upstream)")
    nobs = policy.normalizer["obs"].normalize(obs_dict["obs"])
    if nobs.shape[-1] != obs_dim:
        raise ValueError(
            f"obs_dict['obs'] has {nobs.shape[-1]} features per step; the policy was built with "
            f"obs_dim={obs_dim}"
        )
    return nobs


def denoise_step(
    model: nn.Module,
    process: GenerativeProcess,
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
    array; ``key``: the PRNG key of the step's noise, drawn here per sample (a batch split over
    CPU streams or ranks draws the whole batch's and keeps its rows) and unused by a
    deterministic step.
    """
    trajectory = mx.where(condition_mask, condition_data, trajectory)
    timesteps = mx.broadcast_to(t, (trajectory.shape[0],))
    model_output = model(trajectory, timesteps, **model_kwargs)
    noise = sharded_draw(
        lambda shape: mx.random.normal(shape, dtype=trajectory.dtype, key=key), trajectory.shape
    )
    return process.step(
        model_output, t, trajectory, variance_noise=noise, **step_kwargs
    ).prev_sample


class CompiledStepCache:
    """The ``mx.compile``d :func:`denoise_step` of one policy, rebuilt when its inputs change.

    The compiled function closes over the model, the process (whose tables and
    ``num_inference_steps`` it reads at trace time), the step kwargs, the model's train/eval
    mode, the batch shard being sampled (a CPU stream's chunk) and the sampling weights'
    signature, so each combination gets its own entry. The model's arrays (and the sampling
    weights' copies) are declared as compile inputs, so updated weights (training, EMA,
    checkpoint loads) are picked up without retracing. A deep copy (the EMA policy) starts
    empty, because the copied entries would still call the original model.
    """

    def __init__(self) -> None:
        self.entries: dict[tuple, tuple[nn.Module, GenerativeProcess, Callable]] = {}

    def get(
        self,
        model: nn.Module,
        process: GenerativeProcess,
        num_inference_steps: int,
        step_kwargs: Mapping[str, Any],
        weights: SamplingWeights | None = None,
    ) -> Callable:
        signature = (
            id(model),
            id(process),
            num_inference_steps,
            model.training,
            tuple(sorted(step_kwargs.items())),
            # a chunk's rows of the batch's noise are chosen at trace time
            current_shard(),
            None if weights is None else weights.signature,
        )
        entry = self.entries.get(signature)
        if entry is None or entry[0] is not model or entry[1] is not process:
            fn = mx.compile(
                partial(denoise_step, model, process, dict(step_kwargs)),
                # The random state travels through so dropout in train mode stays random.
                inputs=[model.state, {} if weights is None else weights.arrays, mx.random.state],
                outputs=[mx.random.state],
            )
            entry = (model, process, fn)
            self.entries[signature] = entry
        return entry[2]

    def __deepcopy__(self, memo: dict) -> "CompiledStepCache":
        return CompiledStepCache()


def conditional_sample(
    model: nn.Module,
    process: GenerativeProcess,
    num_inference_steps: int,
    condition_data: mx.array,
    condition_mask: mx.array,
    model_kwargs: dict[str, mx.array | None],
    key: mx.array | None = None,
    step_cache: CompiledStepCache | None = None,
    batch_split: BatchSplit | None = None,
    weights: SamplingWeights | None = None,
    precompute_film: bool = True,
    **step_kwargs: Any,
) -> mx.array:
    """Sample (B, T, D) trajectories by reverse diffusion, keeping ``condition_data`` where
    ``condition_mask`` is set (inpainting), as upstream's ``conditional_sample``.

    Randomness comes from ``key`` (split into the initial noise and one key per step) or, when it
    is None, from a key drawn from MLX's global generator. With ``step_cache`` every step runs
    the compiled :func:`denoise_step` (reading ``weights``' low-precision copies, when given);
    without it the same function runs eagerly, on the model's own weights. With
    ``precompute_film`` a :class:`ConditionalUnet1D` gets every step's FiLM features computed
    before the loop (:meth:`ConditionalUnet1D.film_tables`). ``batch_split`` may cut the batch's
    rows into chunks (accel's CPU streams), with the same result. Nothing is evaluated here:
    the result is a lazy array over the whole loop.
    """
    if key is None:
        key = random_key()
    split = BatchSplit() if batch_split is None else batch_split
    timesteps = process.sampling_timesteps(num_inference_steps)
    keys = mx.random.split(key, len(timesteps) + 1)
    conds = {k: v for k, v in model_kwargs.items() if v is not None}
    film_time = None
    if precompute_film and isinstance(model, ConditionalUnet1D):
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

    if step_cache is None:
        weights = None
    elif weights is not None:
        weights.refresh(model)

    def denoise(rows: dict) -> mx.array:
        if step_cache is None:
            step = partial(denoise_step, model, process, step_kwargs)
        else:
            step = step_cache.get(model, process, num_inference_steps, step_kwargs, weights)
        trajectory = rows["trajectory"]
        for i, t in enumerate(timesteps):
            step_conds = (
                rows["conds"] if film_time is None else {**rows["conds"], "film_time": film_time[i]}
            )
            # the first call traces the step: its layers look their weights up here
            with nullcontext() if weights is None else weights.active():
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

    split.use_blas_threads(condition_data.shape[0])
    chunks = split.map_chunks(denoise, rows)
    if chunks is None:
        return denoise(rows)
    return mx.concatenate([sample for _, sample in chunks])


def diffusion_loss(
    model: nn.Module,
    process: GenerativeProcess,
    trajectory: mx.array,
    condition_mask: mx.array,
    model_kwargs: dict[str, mx.array | None],
    condition_data: mx.array | None = None,
    noise: mx.array | None = None,
    timesteps: mx.array | None = None,
) -> mx.array:
    """Upstream's denoising loss: corrupt ``trajectory`` (B, T, D) at drawn training times,
    inpaint ``condition_data`` (default: ``trajectory``) where ``condition_mask`` is set, and
    return the MSE between the model's prediction and the process's regression target over the
    entries NOT conditioned on.

    ``noise`` (B, T, D) and ``timesteps`` (B,) may be given; otherwise they are drawn from MLX's
    global generator, per sample (in data-parallel training each rank draws what a 1-process run
    would). Pure array code: safe inside ``nn.value_and_grad`` and ``mx.compile``.
    """
    if condition_data is None:
        condition_data = trajectory
    if noise is None:
        noise = sharded_draw(
            lambda shape: mx.random.normal(shape, dtype=trajectory.dtype), trajectory.shape
        )
    if timesteps is None:
        timesteps = sharded_draw(process.sample_train_times, (trajectory.shape[0],))
    target = process.target(trajectory, noise, timesteps)

    noisy_trajectory = process.make_train_input(trajectory, noise, timesteps)
    noisy_trajectory = mx.where(condition_mask, condition_data, noisy_trajectory)
    conds = {k: v for k, v in model_kwargs.items() if v is not None}
    pred = model(noisy_trajectory, timesteps, **conds)

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
