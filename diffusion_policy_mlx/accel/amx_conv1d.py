"""1-D convolutions in bfloat16 on the CPU's AMX tiles, for batched sampling.

Past a few rows a CPU convolution (an im2col GEMM) is bound by arithmetic, and float32 GEMM
is as fast as it goes: about 125 GFLOP/s per core for OpenBLAS on a Sapphire Rapids Xeon, which
kept DDIM sampling at batch 56 (a full evaluation's batch) near upstream's speed. The AMX units
of such a CPU multiply bfloat16 tiles into float32 several times faster. The extension's
``amx_conv1d`` (``csrc/amx_conv1d.cpp``) builds the columns, rounded to bfloat16, straight
from the input and multiplies them with weights packed once into tiles (:func:`pack_weight`),
accumulating in float32 and adding the bias.

Rounding activations and weights to bfloat16 (8 significant bits) changes a product by about
0.2-0.3 % relative, so this path is opt-in: ``accel.cpu_weights: bfloat16`` (or
``DP_MLX_CPU_WEIGHTS=bfloat16``) for sampling on a CPU that has AMX (:func:`~diffusion_policy_mlx.accel.extension.amx_status`).
Training never uses it.
"""

from __future__ import annotations

from types import ModuleType

from diffusion_policy_mlx.accel.cpu_streams import cores_per_stream

import mlx.core as mx

TILE_ROWS = 16  # bfloat16 pairs of the reduction per weight tile
TILE_COLS = 32  # channels (two tiles) per panel, reduction entries per tile row


def pack_weight(weight: mx.array) -> mx.array:
    """A convolution weight (C_out, K, C_in) in the kernel's tile layout:
    (2 * ceil(C_out / 32), ceil(K * C_in / 32), 16, 32) bfloat16.

    Tile ``[j, kt]`` holds channels 16 j .. 16 j + 15 and reduction entries 32 kt .. 32 kt + 31
    (of the flattened K * C_in, tap-major like the columns), as AMX wants its right operand:
    row ``i`` interleaves entries 2 i and 2 i + 1 of each of the 16 channels. Channels and
    entries past the weight's are zeros."""
    c_out = weight.shape[0]
    flat = weight.reshape(c_out, -1)
    entries = flat.shape[1]
    n_pad = -c_out % TILE_COLS
    k_pad = -entries % TILE_COLS
    flat = mx.pad(flat, [(0, n_pad), (0, k_pad)]).astype(mx.bfloat16)
    blocks, k_tiles = (c_out + n_pad) // 16, (entries + k_pad) // TILE_COLS
    # (channel block, channel, k tile, pair, 2) -> (channel block, k tile, pair, channel, 2)
    tiles = flat.reshape(blocks, 16, k_tiles, TILE_ROWS, 2).transpose(0, 2, 3, 1, 4)
    return mx.contiguous(tiles.reshape(blocks, k_tiles, TILE_ROWS, TILE_COLS))


def amx_conv1d(
    x: mx.array,
    packed: mx.array,
    bias: mx.array,
    kernel: int,
    kernels: ModuleType,
    stride: int = 1,
    padding: int = 0,
) -> mx.array:
    """``mx.conv1d(x, w, stride, padding) + bias`` in bfloat16 with float32 accumulation:
    x (B, T, C_in) float32, ``packed = pack_weight(w)`` for w (C_out, K, C_in), bias (C_out,)
    float32 -> (B, T_out, C_out) float32, through ``kernels`` (the extension); on as many
    threads as the CPU streams leave this one."""
    return kernels.amx_conv1d(
        x,
        packed,
        bias,
        kernel=kernel,
        stride=stride,
        padding=padding,
        threads=cores_per_stream(),
    )
