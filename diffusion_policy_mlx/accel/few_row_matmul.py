"""``x @ w.T`` and 'same' convolutions for a few rows of ``x`` on the CPU, through the package's
kernel.

At batch 1 the U-Net's convolutions (as im2col GEMMs) have 4 to 16 rows, and each is a pass over
its weights: the forward is bound by how fast the weights are read. MLX hands these products to
BLAS, which packs the wide operand before multiplying. The extension's ``few_row_matmul``
(``csrc/few_row_matmul.cpp``), an MLX primitive with AVX-512 and AVX2 code, reads every weight
once and multiplies it into all rows from registers, on every core; ``few_row_conv1d`` also
builds a convolution's columns and adds its bias, so a batch-1 convolution is one operation
instead of MLX's pad, slices, concatenation, product and add. ``benchmarks/README.md`` has the
measurements.

The layers of :mod:`.conv1d` call these in eval mode (sampling; training keeps MLX's products
and their tuned gradients) for at most :data:`MAX_ROWS` rows, where the extension is in use
(:mod:`.extension`). Both accept float16 weights (``accel.cpu_weights: float16``), accumulating
in float32.
"""

from __future__ import annotations

from types import ModuleType

from diffusion_policy_mlx.accel.cpu_streams import cores_per_stream

import mlx.core as mx

# The kernel keeps up to 4 rows x 4 weight rows in registers and rereads cached weight blocks
# for more rows; past 16 rows the products are BLAS's ground (compute, not reads).
MAX_ROWS = 16


def matmul_wt(x: mx.array, w: mx.array, kernels: ModuleType | None) -> mx.array:
    """``x @ w.T``: x (..., K) float32, w (N, K) float32 or float16 -> (..., N) float32.

    Through ``kernels`` (the extension, or None for MLX's product) where ``x`` has at most
    :data:`MAX_ROWS` rows (its leading axes flattened), on as many threads as the CPU streams
    leave this one; its gradients are GEMMs."""
    rows = x.size // x.shape[-1]
    if kernels is None or rows > MAX_ROWS:
        return x @ w.T
    y = kernels.few_row_matmul(x.reshape(rows, x.shape[-1]), w, threads=cores_per_stream())
    return y.reshape(*x.shape[:-1], w.shape[0])


def few_row_conv1d(x: mx.array, w: mx.array, bias: mx.array, kernels: ModuleType) -> mx.array:
    """``mx.conv1d(x, w, padding=K // 2) + bias`` through the extension: x (B, T, C_in)
    float32 with B * T <= :data:`MAX_ROWS`, w (C_out, K, C_in) float32 or float16 (K odd),
    bias (C_out,) -> (B, T, C_out) float32."""
    return kernels.few_row_conv1d(x, w, bias, threads=cores_per_stream())
