"""Sinusoidal embedding of diffusion timesteps."""

import math

import mlx.core as mx
import mlx.nn as nn


class SinusoidalPosEmb(nn.Module):
    """Transformer-style sin/cos features of a scalar per batch element.

    ``x`` (B,) (integer or float timesteps) -> (B, dim): the first ``dim // 2`` columns are sines,
    the rest cosines, at geometric frequencies from 1 down to 1/10000, as upstream.
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"SinusoidalPosEmb: dim must be an even number >= 4, got {dim}")
        self.dim = dim

    def __call__(self, x: mx.array) -> mx.array:
        half_dim = self.dim // 2
        # Frequencies are recomputed per call: a few flops, and no array attribute that MLX
        # would otherwise treat as a trainable parameter.
        freqs = mx.exp(mx.arange(half_dim, dtype=mx.float32) * (-math.log(10000) / (half_dim - 1)))
        emb = x[:, None].astype(mx.float32) * freqs[None, :]
        return mx.concatenate([mx.sin(emb), mx.cos(emb)], axis=-1)
