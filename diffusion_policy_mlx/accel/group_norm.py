"""GroupNorm, and GroupNorm followed by Mish or ReLU, through the package's CPU kernel.

MLX's CPU GroupNorm (``pytorch_compatible``) is a transpose, a layer norm of composed
reductions and a transpose back, each on one thread in scalar code, and autodiff makes its
gradient several times that. In the lowdim U-Net's training step the 25 norms and their Mish
took about as long as the convolutions at the two shallow levels, and in the image policy the
ResNet-18's 20 norms work on far larger activations. The extension's ``group_norm``
(``csrc/group_norm.cpp``) is a vectorised (AVX-512 or AVX2) MLX primitive with its own
gradient, in training and in eval alike (``benchmarks/README.md`` has the measurements). Its
results agree with MLX's to float32 rounding (about 1e-6 relative).
"""

from __future__ import annotations

from types import ModuleType

import mlx.core as mx

from diffusion_policy_mlx.model.common.normalization import GroupNorm


def group_norm(
    x: mx.array, norm: GroupNorm, kernels: ModuleType, activation: str = "none"
) -> mx.array:
    """``activation(norm(x))`` through ``kernels`` (the extension) for channels-last ``x``
    (B, ..., C) float32: the statistics of each of ``norm.num_groups`` groups of
    C / num_groups channels are taken over all of a sample's other axes. ``activation`` is
    ``"none"``, ``"mish"`` or ``"relu"``; ``norm`` is ``pytorch_compatible`` with an affine."""
    batch, channels = x.shape[0], x.shape[-1]
    y = kernels.group_norm(
        x.reshape(batch, -1, channels),
        norm.weight,
        norm.bias,
        groups=norm.num_groups,
        eps=norm.eps,
        activation=activation,
    )
    return y.reshape(x.shape)


class CpuGroupNorm(GroupNorm):
    """The model's ``GroupNorm`` (``pytorch_compatible``, with an affine) through the CPU
    kernel of ``kernels`` where everything is float32; MLX's ops otherwise."""

    kernels: ModuleType

    def __call__(self, x: mx.array, activation: str = "none") -> mx.array:
        float32 = x.dtype == self.weight.dtype == self.bias.dtype == mx.float32
        if not float32 or x.ndim < 2:
            return super().__call__(x, activation)
        return group_norm(x, self, self.kernels, activation)
