"""1-D convolution layers for the CPU, and the GEMM form of the U-Net's transposed convolution.

Each class is a subclass of the ``mlx.nn`` layer it replaces (same parameters, names and
results up to float rounding); :func:`~diffusion_policy_mlx.accel.swap.swap_layers` puts them
into a built model. On the CPU:

* :class:`CpuConv1d` ('same' stride-1 convolutions): at most a few rows (batch 1) go through
  the few-row kernel (:mod:`.few_row_matmul`), or without it ``weight @ columns^T``; batched
  sampling with ``accel.cpu_weights: bfloat16`` through the AMX kernel; everything else through
  :func:`conv1d_same`, whose gradients skip the padded taps.
* :class:`CpuStridedConv1d` (``Downsample1d``): one GEMM over the strided taps. MLX's CPU
  gradient of a strided convolution with respect to its input is a transposed convolution on a
  direct loop, which made these layers a third of the lowdim training step.

On every device, :class:`GemmConvTranspose1d` (``Upsample1d``) computes its transposed
convolution as one GEMM. ``benchmarks/README.md`` has the measurements.
"""

from __future__ import annotations

from diffusion_policy_mlx.accel.amx_conv1d import amx_conv1d, pack_weight
from diffusion_policy_mlx.accel.few_row_matmul import MAX_ROWS, few_row_conv1d, matmul_wt
from diffusion_policy_mlx.accel.low_precision import LowPrecisionLayer

import mlx.core as mx
import mlx.nn as nn

# Without the package's CPU kernel, at most this many (batch x time) rows, a CPU convolution
# runs as weight @ columns^T.
FEW_ROWS = 4


def conv1d_columns(x: mx.array, kernel: int, stride: int, padding: int) -> mx.array:
    """The input taps of every output step side by side (im2col): (B, T, C) ->
    (B, T_out, kernel * C), tap-major like an MLX conv weight (C_out, kernel, C_in) flattened,
    so that ``columns @ weight.reshape(C_out, -1).T`` is the convolution."""
    out_length = (x.shape[1] + 2 * padding - kernel) // stride + 1
    padded = mx.pad(x, [(0, 0), (padding, padding), (0, 0)])
    # output step t reads padded steps stride * t + k, k = 0 .. kernel - 1
    taps = [padded[:, k : k + stride * (out_length - 1) + 1 : stride] for k in range(kernel)]
    return mx.concatenate(taps, axis=-1)


def same_conv_tap_groups(length: int, kernel: int) -> list[tuple[int, int, int, int]]:
    """The output steps of a stride-1 'same' convolution (odd ``kernel``, padding
    ``kernel // 2``) over ``length`` steps, in runs ``(t0, t1, a, b)``: steps ``[t0, t1)`` read
    input only through taps ``[a, b)``; their other taps read padding. At ``length = 4``,
    ``kernel = 5``: ``[(0, 1, 2, 5), (1, 2, 1, 5), (2, 3, 0, 4), (3, 4, 0, 3)]``."""
    pad = kernel // 2
    groups: list[tuple[int, int, int, int]] = []
    for t in range(length):
        taps = (max(0, pad - t), min(kernel, length + pad - t))
        if groups and groups[-1][2:] == taps:
            groups[-1] = (groups[-1][0], t + 1, *taps)
        else:
            groups.append((t, t + 1, *taps))
    return groups


def conv1d_by_tap_groups(x: mx.array, taps: mx.array) -> mx.array:
    """A stride-1 'same' convolution that multiplies no padding: (B, T, C_in) with ``taps``
    (K, C_in, C_out) -> (B, T, C_out). One GEMM per run of
    :func:`same_conv_tap_groups`, over that run's taps only; ``taps`` should be contiguous, so
    that each run's slice of it is a matrix without a copy."""
    batch, length, c_in = x.shape
    kernel, _, c_out = taps.shape
    parts = []
    for t0, t1, a, b in same_conv_tap_groups(length, kernel):
        steps, width = t1 - t0, b - a
        first = t0 + a - kernel // 2  # the input step tap a of output step t0 reads
        cols = mx.concatenate(
            [x[:, first + j : first + j + steps] for j in range(width)], axis=-1
        )  # (B, steps, width * C_in), tap-major
        y = cols.reshape(batch * steps, width * c_in) @ taps[a:b].reshape(width * c_in, c_out)
        parts.append(y.reshape(batch, steps, c_out))
    return mx.concatenate(parts, axis=1)


@mx.custom_function
def conv1d_same(x: mx.array, weight: mx.array) -> mx.array:
    """``mx.conv1d(x, weight, padding=K // 2)``: (B, T, C_in), (C_out, K, C_in) -> (B, T, C_out),
    with gradients that skip the padded taps.

    MLX's CPU gradient of a convolution multiplies the zero padding like any input (at the
    U-Net's deepest level, T = 4 and K = 5, 6 of the 20 (step, tap) products are such zeros),
    and ran at half the machine's GEMM rate besides. ``dx`` is the convolution of the output
    gradient with the taps reversed and transposed, by :func:`conv1d_by_tap_groups`; each
    tap's ``dW`` is one GEMM over the steps it reads.
    """
    return mx.conv1d(x, weight, padding=weight.shape[1] // 2)


@conv1d_same.vjp
def _conv1d_same_vjp(
    primals: tuple[mx.array, mx.array], cotangent: mx.array, output: mx.array
) -> tuple[mx.array, mx.array]:
    x, weight = primals
    c_out, kernel, c_in = weight.shape
    batch, length, _ = x.shape
    pad = kernel // 2
    # dx[s] = sum_k dy[s + pad - k] W_k: taps reversed, (K, C_out, C_in)
    dx = conv1d_by_tap_groups(cotangent, mx.contiguous(weight.transpose(1, 0, 2)[::-1]))
    dw = []
    for k in range(kernel):
        shift = k - pad  # output step t reads input step t + shift through tap k
        t0, t1 = max(0, -shift), min(length, length - shift)
        if t1 <= t0:  # a tap that reads only padding (T <= K // 2)
            dw.append(mx.zeros((c_out, c_in), weight.dtype))
            continue
        rows = batch * (t1 - t0)
        dy_k = cotangent[:, t0:t1].reshape(rows, c_out)
        x_k = x[:, t0 + shift : t1 + shift].reshape(rows, c_in)
        dw.append(dy_k.T @ x_k)
    return dx, mx.stack(dw, axis=1)


class CpuConv1d(LowPrecisionLayer, nn.Conv1d):
    """A stride-1 'same' ``nn.Conv1d`` (odd kernel, padding ``K // 2``, with a bias) on the
    CPU: (B, T, C_in) -> (B, T, C_out)."""

    def __call__(self, x: mx.array) -> mx.array:
        rows = x.shape[0] * x.shape[1]
        # the few-row kernel reads the weights once at the machine's memory rate
        limit = FEW_ROWS if self.few_row_kernels(0) is None else MAX_ROWS
        if rows <= limit:
            return self.few_rows(x)
        packed = self.packed_for(rows)
        if packed is not None:
            kernel = self.weight.shape[1]
            return amx_conv1d(x, packed, self.bias, kernel, self.kernels, padding=kernel // 2)
        return conv1d_same(x, self.weight) + self.bias

    def few_rows(self, x: mx.array) -> mx.array:
        """The convolution as a product of the weight with the input's columns, for a handful
        of rows (batch 1: T = 4 to 16 steps at the U-Net's levels), where it is a pass over the
        weights. Without the kernel the product is ``weight @ columns^T``: MLX hands
        ``columns @ weight^T`` to BLAS with the weight as the wide operand, which OpenBLAS packs
        in full before multiplying; as the tall left operand it is packed block by block while
        in cache."""
        batch, length, _ = x.shape
        rows = batch * length
        weight = self.weight_for(rows)  # (C_out, K, C_in)
        kernels = self.few_row_kernels(rows)
        if kernels is not None:
            return few_row_conv1d(x, weight, self.bias, kernels)
        c_out, kernel, _ = weight.shape
        cols = conv1d_columns(x, kernel, stride=1, padding=kernel // 2)
        y = (weight.reshape(c_out, -1) @ cols.reshape(rows, -1).T).T
        return y.reshape(batch, length, c_out) + self.bias


class CpuStridedConv1d(LowPrecisionLayer, nn.Conv1d):
    """A strided ``nn.Conv1d`` (with a bias) on the CPU as one GEMM over its strided taps:
    (B, T, C_in) -> (B, T_out, C_out)."""

    def __call__(self, x: mx.array) -> mx.array:
        kernel = self.weight.shape[1]
        out_length = (x.shape[1] + 2 * self.padding - kernel) // self.stride + 1
        rows = x.shape[0] * out_length
        packed = self.packed_for(rows)
        if packed is not None:
            return amx_conv1d(x, packed, self.bias, kernel, self.kernels, self.stride, self.padding)
        cols = conv1d_columns(x, kernel, self.stride, self.padding)  # (B, T_out, K * C_in)
        weight = self.weight_for(rows)  # (C_out, K, C_in)
        flat = weight.reshape(weight.shape[0], -1)
        return matmul_wt(cols, flat, self.few_row_kernels(rows)) + self.bias


class GemmConvTranspose1d(LowPrecisionLayer, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d(dim, dim, kernel_size=4, stride=2, padding=1)`` (``Upsample1d``'s)
    as one GEMM: (B, T, C_in) -> (B, 2T, C_out).

    MLX's CPU backend runs transposed convolutions on a direct loop, where the GEMM takes
    milliseconds. With ``y[o] = sum_{o = 2i - 1 + k} x[i] W_k``, even outputs take taps 1 and 3
    and odd outputs taps 0 and 2: ``y[2t] = x[t] W_1 + x[t-1] W_3`` and
    ``y[2t+1] = x[t+1] W_0 + x[t] W_2``.
    """

    def __call__(self, x: mx.array) -> mx.array:
        batch, length, _ = x.shape
        rows = batch * length
        weight = self.weight_for(rows)  # (C_out, 4, C_in)
        c_out = weight.shape[0]
        # (B, T, C_in) @ (C_in, 4 * C_out): every tap's product in one GEMM
        packed = self.packed_for(rows)
        if packed is not None:
            taps = amx_conv1d(x, packed, mx.zeros((4 * c_out,)), 1, self.kernels)
        else:
            taps = matmul_wt(x, weight.reshape(4 * c_out, -1), self.few_row_kernels(rows))
        taps = taps.reshape(batch, length, c_out, 4)
        zero = mx.zeros((batch, 1, c_out), dtype=taps.dtype)
        prev_tap3 = mx.concatenate([zero, taps[:, :-1, :, 3]], axis=1)  # x[t-1] W_3
        next_tap0 = mx.concatenate([taps[:, 1:, :, 0], zero], axis=1)  # x[t+1] W_0
        even = taps[..., 1] + prev_tap3
        odd = taps[..., 2] + next_tap0
        y = mx.stack([even, odd], axis=2).reshape(batch, 2 * length, c_out)
        return y + self.bias

    def low_precision_weight(self, dtype: mx.Dtype) -> mx.array:
        if dtype == mx.bfloat16:
            # packed as the (4 C_out, 1, C_in) product above takes it
            return pack_weight(self.weight.reshape(-1, 1, self.weight.shape[2]))
        return super().low_precision_weight(dtype)
