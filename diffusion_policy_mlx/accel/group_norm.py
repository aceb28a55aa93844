"""GroupNorm, and GroupNorm followed by Mish or ReLU, through the package's CPU kernel.

MLX's CPU GroupNorm (``pytorch_compatible``) is a transpose, a layer norm of composed
reductions and a transpose back, each on one thread in scalar code, and autodiff makes its
gradient several times that. In the lowdim U-Net's training step the 25 norms and their Mish
took about as long as the convolutions at the two shallow levels, and in the image policy the
ResNet-18's 20 norms work on far larger activations. The extension's ``group_norm``
(``csrc/group_norm.cpp``) is a vectorised (AVX-512 or AVX2) MLX primitive with its own
gradient: 9.8 -> 0.95 ms forward and 16.5 -> 2.4 ms with gradients for a (128, 4, 1024) input
with Mish, 96 -> 8.5 ms and 150 -> 21 ms for the ResNet stem's (64, 42 x 42, 64) with ReLU
(``python benchmarks/bench_cpu_group_norm.py --ops``, 2-core Xeon).

It is used where MLX's default device is the CPU, the extension is usable
(:func:`~diffusion_policy_mlx.accel.few_row_matmul.kernel_status`), the norm is
``pytorch_compatible`` with an affine and everything is float32, in training and in eval alike;
otherwise MLX's ``GroupNorm`` runs. Their results agree to float32 rounding (about 1e-6
relative); :data:`ENABLED` set to False chooses MLX's, and ``DP_MLX_CPU_KERNELS=off`` turns
off the whole extension (this kernel and the few-row one).
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn

from diffusion_policy_mlx.accel import few_row_matmul
from diffusion_policy_mlx.model.common.activation import mish

# False routes every norm to MLX's: the other side of benchmarks/bench_cpu_group_norm.py.
ENABLED = True

ACTIVATIONS: dict[str, Callable[[mx.array], mx.array]] = {
    "none": lambda x: x,
    "mish": mish,
    "relu": nn.relu,
}


def uses_kernel(x: mx.array, norm: nn.GroupNorm) -> bool:
    """Whether ``norm`` applied to ``x`` runs through the CPU kernel (see the module's doc)."""
    return (
        ENABLED
        and mx.default_device() == mx.cpu
        and norm.pytorch_compatible
        and "weight" in norm
        and x.dtype == norm.weight.dtype == norm.bias.dtype == mx.float32
        and x.ndim >= 2
        and few_row_matmul.extension() is not None
    )


def group_norm(x: mx.array, norm: nn.GroupNorm, activation: str = "none") -> mx.array:
    """``activation(norm(x))`` for channels-last ``x`` (B, ..., C): the statistics of each of
    ``norm.num_groups`` groups of C / num_groups channels are taken over all of a sample's
    other axes. ``activation`` is ``"none"``, ``"mish"`` or ``"relu"``."""
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"group_norm: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}"
        )
    if not uses_kernel(x, norm):
        # MLX's own call: norm may be the GroupNorm below, whose __call__ comes here
        return ACTIVATIONS[activation](nn.GroupNorm.__call__(norm, x))
    batch, channels = x.shape[0], x.shape[-1]
    y = few_row_matmul.extension().group_norm(
        x.reshape(batch, -1, channels),
        norm.weight,
        norm.bias,
        groups=norm.num_groups,
        eps=norm.eps,
        activation=activation,
    )
    return y.reshape(x.shape)


class GroupNorm(nn.GroupNorm):
    """``mlx.nn.GroupNorm`` (same parameters and names) that runs through the CPU kernel
    where :func:`uses_kernel` holds: (B, ..., C) -> (B, ..., C)."""

    def __call__(self, x: mx.array) -> mx.array:
        return group_norm(x, self)
