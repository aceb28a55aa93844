"""1-D convolution building blocks of the temporal U-Net, channels-last ``(B, T, C)``.

Attribute names reproduce upstream's PyTorch ``state_dict`` names (``conv.weight``,
``block.0.weight``, ...), so upstream checkpoints load with
:func:`diffusion_policy_mlx.common.upstream.load_upstream_state_dict`.
"""

import mlx.core as mx
import mlx.nn as nn

from diffusion_policy_mlx.model.common.activation import Mish
from diffusion_policy_mlx.model.common.normalization import GroupNorm


class Downsample1d(nn.Module):
    """Halves the horizon with a stride-2 convolution: (B, T, dim) -> (B, ceil(T/2), dim)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        return self.conv(x)


class Upsample1d(nn.Module):
    """Doubles the horizon with a stride-2 transposed convolution: (B, T, dim) -> (B, 2T, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, kernel_size=4, stride=2, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        return self.conv(x)


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
        so that an accelerated block can apply them together with the norm."""
        conv, norm, _ = self.block
        # the norm applies block.2's Mish itself, so that an accelerated norm fuses the two
        x = norm(conv(x), activation="mish")
        if scale is not None:
            x = x * scale[:, None, :]
        if shift is not None:
            x = x + shift[:, None, :]
        if residual is not None:
            x = x + residual
        return x
