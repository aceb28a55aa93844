"""1-D convolution building blocks of the temporal U-Net, channels-last ``(B, T, C)``.

Attribute names reproduce upstream's PyTorch ``state_dict`` names (``conv.weight``,
``block.0.weight``, ...), so upstream checkpoints load with
:func:`diffusion_policy_mlx.common.upstream.load_upstream_state_dict`.
"""

import mlx.core as mx
import mlx.nn as nn

from diffusion_policy_mlx.accel import amx_conv1d, few_row_matmul
from diffusion_policy_mlx.accel.group_norm import GroupNorm, group_norm
from diffusion_policy_mlx.accel.group_norm_mish import fused_available, group_norm_mish
from diffusion_policy_mlx.model.common.activation import Mish


def conv1d_columns(x: mx.array, kernel: int, stride: int, padding: int) -> mx.array:
    """The input taps of every output step side by side (im2col): (B, T, C) ->
    (B, T_out, kernel * C), tap-major like an MLX conv weight (C_out, kernel, C_in) flattened,
    so that ``columns @ weight.reshape(C_out, -1).T`` is the convolution."""
    out_length = (x.shape[1] + 2 * padding - kernel) // stride + 1
    padded = mx.pad(x, [(0, 0), (padding, padding), (0, 0)])
    # output step t reads padded steps stride * t + k, k = 0 .. kernel - 1
    taps = [padded[:, k : k + stride * (out_length - 1) + 1 : stride] for k in range(kernel)]
    return mx.concatenate(taps, axis=-1)


class Downsample1d(nn.Module):
    """Halves the horizon with a stride-2 convolution: (B, T, dim) -> (B, ceil(T/2), dim).

    On the CPU the convolution runs as one GEMM over the three strided taps: MLX's CPU gradient
    of a strided convolution with respect to its input is a transposed convolution on a direct
    loop (675 ms for a (256, 16, 256) input, against 5.5 ms for the forward), which made these
    two layers a third of the lowdim training step. GPUs keep ``mx.conv1d``. A few rows (batch
    1) go through :func:`~diffusion_policy_mlx.accel.few_row_matmul.matmul_wt`, batched
    sampling with ``DP_MLX_CPU_WEIGHTS=bfloat16`` through the AMX kernel.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        if mx.default_device() != mx.cpu:
            return self.conv(x)
        packed = few_row_matmul.packed_weight_for(self.conv, x.shape[0] * ((x.shape[1] + 1) // 2))
        if packed is not None:
            return amx_conv1d.amx_conv1d(x, packed, self.conv.bias, 3, stride=2, padding=1)
        cols = conv1d_columns(x, kernel=3, stride=2, padding=1)  # (B, ceil(T/2), 3 * C_in)
        # (C_out, 3, C_in)
        weight = few_row_matmul.weight_for(self.conv, cols.shape[0] * cols.shape[1])
        flat = weight.reshape(weight.shape[0], -1)
        return few_row_matmul.matmul_wt(cols, flat, self.conv) + self.conv.bias


class Upsample1d(nn.Module):
    """Doubles the horizon with a stride-2 transposed convolution: (B, T, dim) -> (B, 2T, dim).

    The weights are those of ``ConvTranspose1d(dim, dim, kernel_size=4, stride=2, padding=1)``
    (upstream's layer and names), but the output is computed as one GEMM: MLX's CPU backend runs
    transposed convolutions on a direct loop, 1.7 s for a (256, 4, 512) input where the GEMM
    takes milliseconds. With ``y[o] = sum_{o = 2i - 1 + k} x[i] W_k``, even outputs take taps 1
    and 3 and odd outputs taps 0 and 2: ``y[2t] = x[t] W_1 + x[t-1] W_3`` and
    ``y[2t+1] = x[t+1] W_0 + x[t] W_2``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, kernel_size=4, stride=2, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        batch, length, _ = x.shape
        weight = few_row_matmul.weight_for(self.conv, batch * length)  # (C_out, 4, C_in)
        c_out = weight.shape[0]
        # (B, T, C_in) @ (C_in, 4 * C_out): every tap's product in one GEMM
        packed = few_row_matmul.packed_weight_for(self.conv, batch * length)
        if packed is not None:
            taps = amx_conv1d.amx_conv1d(x, packed, mx.zeros((4 * c_out,)), 1)
        else:
            taps = few_row_matmul.matmul_wt(x, weight.reshape(4 * c_out, -1), self.conv)
        taps = taps.reshape(batch, length, c_out, 4)
        zero = mx.zeros((batch, 1, c_out), dtype=taps.dtype)
        prev_tap3 = mx.concatenate([zero, taps[:, :-1, :, 3]], axis=1)  # x[t-1] W_3
        next_tap0 = mx.concatenate([taps[:, 1:, :, 0], zero], axis=1)  # x[t+1] W_0
        even = taps[..., 1] + prev_tap3
        odd = taps[..., 2] + next_tap0
        y = mx.stack([even, odd], axis=2).reshape(batch, 2 * length, c_out)
        return y + self.conv.bias


# Without the package's CPU kernel, at most this many (batch x time) rows, a CPU convolution
# runs as weight @ columns^T.
FEW_ROWS = 4


def few_rows_limit(conv: nn.Module) -> int:
    """Most (batch x time) rows a CPU convolution takes :func:`conv1d_few_rows` for: the
    kernel's :data:`~diffusion_policy_mlx.accel.few_row_matmul.MAX_ROWS` where it is
    used (``conv`` in eval mode), else :data:`FEW_ROWS`."""
    if few_row_matmul.uses_kernel(0, conv):
        return few_row_matmul.MAX_ROWS
    return FEW_ROWS


def conv1d_few_rows(conv: nn.Conv1d, x: mx.array) -> mx.array:
    """``conv(x)`` (stride 1, odd kernel, 'same' padding) as a product of its weight with the
    input's columns: (B, T, C_in) -> (B, T, C_out).

    For a handful of rows (batch 1: T = 4 to 16 steps at the U-Net's levels) a convolution is a
    pass over its weights. The package's CPU kernel
    (:func:`~diffusion_policy_mlx.accel.few_row_matmul.few_row_conv1d`) reads them once
    at the machine's memory rate, building the columns and adding the bias itself. Without it,
    the product is ``weight @ columns^T``: MLX hands ``columns @ weight^T`` to BLAS with the
    weight as the wide operand, which OpenBLAS packs in full before multiplying, 3.1 ms for a
    1024-channel kernel-5 layer (21 MB) on a 2-core EPYC; with the weight as the tall left
    operand it is packed block by block while in cache: 2.0 ms.
    """
    batch, length, _ = x.shape
    weight = few_row_matmul.weight_for(conv, batch * length)  # (C_out, K, C_in)
    if few_row_matmul.uses_kernel(batch * length, conv):
        return few_row_matmul.few_row_conv1d(x, weight, conv.bias)
    c_out, kernel, _ = weight.shape
    cols = conv1d_columns(x, kernel, stride=1, padding=kernel // 2)
    y = (weight.reshape(c_out, -1) @ cols.reshape(batch * length, -1).T).T
    return y.reshape(batch, length, c_out) + conv.bias


def conv1d(conv: nn.Conv1d, x: mx.array) -> mx.array:
    """A stride-1 'same' ``conv`` (odd kernel) on (B, T, C_in) -> (B, T, C_out), by the fastest
    path for the device and size: MLX's convolution on a GPU; on the CPU
    :func:`conv1d_few_rows` for at most :func:`few_rows_limit` rows, else the bfloat16 AMX
    kernel where ``DP_MLX_CPU_WEIGHTS=bfloat16`` provides packed weights
    (:func:`~diffusion_policy_mlx.accel.few_row_matmul.packed_weight_for`), else
    :func:`conv1d_same` (its gradients skip the padded taps)."""
    if mx.default_device() != mx.cpu:
        return conv(x)
    rows = x.shape[0] * x.shape[1]
    if rows <= few_rows_limit(conv):
        return conv1d_few_rows(conv, x)
    packed = few_row_matmul.packed_weight_for(conv, rows)
    if packed is not None:
        kernel = conv.weight.shape[1]
        return amx_conv1d.amx_conv1d(x, packed, conv.bias, kernel, padding=kernel // 2)
    return conv1d_same(x, conv.weight) + conv.bias


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

    MLX's CPU gradient of a convolution multiplies the zero padding like any input; at the
    U-Net's deepest level (T = 4, K = 5) 6 of the 20 (step, tap) products are such zeros, and
    it ran at half the machine's GEMM rate besides: 155 ms for a (128, 4, 1024) input on one
    core of a 2-core EPYC, against 93 ms for these gradients (``benchmarks/bench_conv1d.py``).
    ``dx`` is the convolution of the output gradient with the taps reversed and transposed,
    by :func:`conv1d_by_tap_groups`; each tap's ``dW`` is one GEMM over the steps it reads.
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


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish, length preserving: (B, T, C_in) -> (B, T, C_out)."""

    def __init__(self, inp_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(
                f"Conv1dBlock: kernel_size must be odd to keep the horizon length, got {kernel_size}"
            )
        if out_channels % n_groups:
            raise ValueError(
                f"Conv1dBlock: out_channels={out_channels} is not divisible by n_groups={n_groups}"
            )
        # A list, like torch's nn.Sequential, so the names are block.0.* and block.1.*.
        self.block = [
            nn.Conv1d(inp_channels, out_channels, kernel_size, padding=kernel_size // 2),
            GroupNorm(n_groups, out_channels, pytorch_compatible=True),
            Mish(),
        ]

    def __call__(
        self,
        x: mx.array,
        scale: mx.array | None = None,
        shift: mx.array | None = None,
        residual: mx.array | None = None,
    ) -> mx.array:
        """``block(x) * scale + shift + residual``: the optional FiLM ``scale``, ``shift``
        (B, C_out) and ``residual`` (B, T, C_out) of ``ConditionalResidualBlock1D``, taken here
        so that on NVIDIA GPUs in eval mode one fused kernel applies them with the norm."""
        conv, norm, _ = self.block
        x = conv1d(conv, x)
        if not self.training and fused_available():
            return group_norm_mish(
                x, norm.weight, norm.bias, norm.num_groups, norm.eps, scale, shift, residual
            )
        x = group_norm(x, norm, activation="mish")
        if scale is not None:
            x = x * scale[:, None, :]
        if shift is not None:
            x = x + shift[:, None, :]
        if residual is not None:
            x = x + residual
        return x
