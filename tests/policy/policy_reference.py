"""Test doubles and a plain reference loop for the policy tests.

The reference code follows upstream's ``conditional_sample`` and ``compute_loss`` literally, in
numpy where upstream uses in-place tensor assignment, so the policies' vectorised MLX paths are
checked against an independent formulation.
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from diffusion_policy_mlx.model.common.normalizer import LinearNormalizer


class AffineDenoiser(nn.Module):
    """A denoiser whose output is known in closed form.

    ``out = w * sample + 0.01 * t + mean(cond)``, where ``cond`` is ``global_cond`` (B, G) or the
    transformer's ``cond`` (B, To, C) (one scalar per sample) or ``local_cond`` (B, T, L) (one
    scalar per step). ``w`` is a trainable (1,) parameter.
    """

    def __init__(self, w: float = 0.1):
        super().__init__()
        self.w = mx.array([w])
        self.calls = 0

    def __call__(self, sample, timestep, local_cond=None, global_cond=None, cond=None):
        self.calls += 1
        t = mx.array(timestep).astype(mx.float32)
        t = mx.broadcast_to(t, (sample.shape[0],))[:, None, None]
        out = self.w * sample + 0.01 * t
        if global_cond is not None:
            out = out + global_cond.mean(axis=-1)[:, None, None]
        if cond is not None:
            out = out + cond.mean(axis=(1, 2))[:, None, None]
        if local_cond is not None:
            out = out + local_cond.mean(axis=-1)[:, :, None]
        return out


def affine_denoiser_np(w, sample, t, local_cond=None, global_cond=None, cond=None):
    """:class:`AffineDenoiser` in numpy; ``t`` is a scalar or a (B,) array."""
    t = np.broadcast_to(np.asarray(t, dtype=np.float32), (sample.shape[0],))[:, None, None]
    out = w * sample + 0.01 * t
    if global_cond is not None:
        out = out + global_cond.mean(axis=-1)[:, None, None]
    if cond is not None:
        out = out + cond.mean(axis=(1, 2))[:, None, None]
    if local_cond is not None:
        out = out + local_cond.mean(axis=-1)[:, :, None]
    return out.astype(np.float32)


def reference_sample(model, scheduler, num_inference_steps, cond_data, cond_mask, key, **conds):
    """Upstream's loop: numpy masked assignment, Python-int timesteps, one key per step.

    The key convention is the implementation's: ``split(key, n + 1)``, the first for the initial
    noise, then one per step in order.
    """
    cond_data = np.asarray(cond_data)
    cond_mask = np.asarray(cond_mask)
    scheduler.set_timesteps(num_inference_steps)
    timesteps = [int(t) for t in np.asarray(scheduler.timesteps)]
    keys = mx.random.split(key, len(timesteps) + 1)
    trajectory = np.array(mx.random.normal(cond_data.shape, key=keys[0]))
    for i, t in enumerate(timesteps):
        trajectory[cond_mask] = cond_data[cond_mask]
        x = mx.array(trajectory)
        out = model(x, t, **conds)
        trajectory = np.array(scheduler.step(out, t, x, key=keys[i + 1]).prev_sample)
    trajectory[cond_mask] = cond_data[cond_mask]
    return trajectory


def fit_normalizer(data: dict[str, np.ndarray]) -> LinearNormalizer:
    normalizer = LinearNormalizer()
    normalizer.fit(data)
    return normalizer


def normalize_np(normalizer: LinearNormalizer, key: str, x: np.ndarray) -> np.ndarray:
    state = normalizer.state_dict()
    scale = state[f"params_dict.{key}.scale"]
    offset = state[f"params_dict.{key}.offset"]
    return (x * scale + offset).astype(np.float32)


def unnormalize_np(normalizer: LinearNormalizer, key: str, x: np.ndarray) -> np.ndarray:
    state = normalizer.state_dict()
    scale = state[f"params_dict.{key}.scale"]
    offset = state[f"params_dict.{key}.offset"]
    return ((x - offset) / scale).astype(np.float32)


def add_noise_np(scheduler, x0: np.ndarray, noise: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
    acp = np.asarray(scheduler.alphas_cumprod)[timesteps][:, None, None]
    return (np.sqrt(acp) * x0 + np.sqrt(1 - acp) * noise).astype(np.float32)


def masked_mse_np(pred, target, condition_mask) -> float:
    """Upstream's loss: elementwise MSE times ~mask, mean per sample, then over the batch."""
    loss = (pred - target) ** 2 * (~condition_mask)
    return float(loss.reshape(loss.shape[0], -1).mean(axis=1).mean())
