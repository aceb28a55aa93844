"""Upstream's FiLM-conditioned temporal U-Net, channels-last.

Upstream transposes ``(B, T, C)`` to channels-first around every call; in MLX ``(B, T, C)`` already
is the channels-last layout convolutions want, so no transposes happen anywhere in this model.
"""

import logging

import mlx.core as mx
import mlx.nn as nn

from diffusion_policy_mlx.model.common.activation import Mish
from diffusion_policy_mlx.model.diffusion.conv1d_components import (
    Conv1dBlock,
    Downsample1d,
    Upsample1d,
)
from diffusion_policy_mlx.model.diffusion.positional_embedding import SinusoidalPosEmb

logger = logging.getLogger(__name__)


class ConditionalResidualBlock1D(nn.Module):
    """Two Conv1dBlocks with FiLM conditioning in between, plus a residual connection.

    ``x`` (B, T, in_channels), ``cond`` (B, cond_dim) -> (B, T, out_channels). The condition is
    projected to a per-channel bias, or to a per-channel scale and bias when
    ``cond_predict_scale`` (https://arxiv.org/abs/1709.07871).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_dim: int,
        kernel_size: int = 3,
        n_groups: int = 8,
        cond_predict_scale: bool = False,
    ):
        super().__init__()
        self.blocks = [
            Conv1dBlock(in_channels, out_channels, kernel_size, n_groups=n_groups),
            Conv1dBlock(out_channels, out_channels, kernel_size, n_groups=n_groups),
        ]
        cond_channels = out_channels * 2 if cond_predict_scale else out_channels
        self.cond_predict_scale = cond_predict_scale
        self.out_channels = out_channels
        # Index 1 holds the Linear, as in upstream's Sequential(Mish, Linear, Rearrange).
        self.cond_encoder = [Mish(), nn.Linear(cond_dim, cond_channels)]
        self.residual_conv = (
            nn.Conv1d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def __call__(self, x: mx.array, cond: mx.array) -> mx.array:
        embed = cond
        for layer in self.cond_encoder:
            embed = layer(embed)
        # (B, cond_channels): the blocks broadcast it over the horizon.
        if self.cond_predict_scale:
            scale, bias = embed[:, : self.out_channels], embed[:, self.out_channels :]
        else:
            scale, bias = None, embed
        out = self.blocks[0](x, scale=scale, shift=bias)
        return self.blocks[1](out, residual=self.residual_conv(x))


class ConditionalUnet1D(nn.Module):
    """Denoiser over action sequences: a 1-D U-Net conditioned on the diffusion step.

    ``__call__(sample (B, T, input_dim), timestep (B,) or scalar, local_cond (B, T, local_cond_dim)
    = None, global_cond (B, global_cond_dim) = None) -> (B, T, input_dim)``. ``T`` must be
    divisible by ``2 ** (len(down_dims) - 1)``.

    Kept from upstream for checkpoint compatibility: the second local-condition encoder
    (``local_cond_encoder.1``) exists and holds weights, but upstream never adds its output (its
    up-path condition ``idx == len(up_modules)`` is never true). It is therefore not computed
    here, and it is frozen, so optimizers leave it untouched exactly as torch's AdamW skips
    parameters without gradients.
    """

    def __init__(
        self,
        input_dim: int,
        local_cond_dim: int | None = None,
        global_cond_dim: int | None = None,
        diffusion_step_embed_dim: int = 256,
        down_dims: tuple[int, ...] | list[int] = (256, 512, 1024),
        kernel_size: int = 3,
        n_groups: int = 8,
        cond_predict_scale: bool = False,
    ):
        super().__init__()
        down_dims = list(down_dims)
        if not down_dims:
            raise ValueError("ConditionalUnet1D: down_dims must name at least one level")
        all_dims = [input_dim, *down_dims]
        start_dim = down_dims[0]
        self.input_dim = input_dim
        self.local_cond_dim = local_cond_dim
        self.global_cond_dim = global_cond_dim
        self.n_levels = len(down_dims)

        dsed = diffusion_step_embed_dim
        self.diffusion_step_encoder = [
            SinusoidalPosEmb(dsed),
            nn.Linear(dsed, dsed * 4),
            Mish(),
            nn.Linear(dsed * 4, dsed),
        ]
        cond_dim = dsed + (global_cond_dim or 0)

        def res_block(dim_in: int, dim_out: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(
                dim_in,
                dim_out,
                cond_dim=cond_dim,
                kernel_size=kernel_size,
                n_groups=n_groups,
                cond_predict_scale=cond_predict_scale,
            )

        in_out = list(zip(all_dims[:-1], all_dims[1:], strict=True))

        self.local_cond_encoder = None
        if local_cond_dim is not None:
            dim_out = in_out[0][1]
            self.local_cond_encoder = [
                res_block(local_cond_dim, dim_out),
                res_block(local_cond_dim, dim_out),
            ]
            self.local_cond_encoder[1].freeze()

        mid_dim = all_dims[-1]
        self.mid_modules = [res_block(mid_dim, mid_dim), res_block(mid_dim, mid_dim)]

        self.down_modules = []
        for ind, (dim_in, dim_out) in enumerate(in_out):
            is_last = ind == len(in_out) - 1
            self.down_modules.append(
                [
                    res_block(dim_in, dim_out),
                    res_block(dim_out, dim_out),
                    nn.Identity() if is_last else Downsample1d(dim_out),
                ]
            )

        # Every up level upsamples (upstream's is_last test never fires on the shorter list).
        self.up_modules = [
            [res_block(dim_out * 2, dim_in), res_block(dim_in, dim_in), Upsample1d(dim_in)]
            for dim_in, dim_out in reversed(in_out[1:])
        ]

        # Upstream builds this block with the default n_groups=8 whatever n_groups is.
        self.final_conv = [
            Conv1dBlock(start_dim, start_dim, kernel_size=kernel_size),
            nn.Conv1d(start_dim, input_dim, 1),
        ]

    def encode_timestep(self, timestep: mx.array | int | float, batch_size: int) -> mx.array:
        """Diffusion-step feature (B, diffusion_step_embed_dim) from (B,) or scalar timesteps."""
        t = timestep if isinstance(timestep, mx.array) else mx.array(timestep)
        x = mx.broadcast_to(t, (batch_size,))
        for layer in self.diffusion_step_encoder:
            x = layer(x)
        return x

    def __call__(
        self,
        sample: mx.array,
        timestep: mx.array | int | float,
        local_cond: mx.array | None = None,
        global_cond: mx.array | None = None,
        **kwargs,
    ) -> mx.array:
        self._check_inputs(sample, local_cond, global_cond)
        global_feature = self.encode_timestep(timestep, sample.shape[0])
        if global_cond is not None:
            global_feature = mx.concatenate([global_feature, global_cond], axis=-1)

        x = sample
        h = []
        for idx, (resnet, resnet2, downsample) in enumerate(self.down_modules):
            x = resnet(x, global_feature)
            if idx == 0 and local_cond is not None:
                x = x + self.local_cond_encoder[0](local_cond, global_feature)
            x = resnet2(x, global_feature)
            h.append(x)
            x = downsample(x)

        for mid_module in self.mid_modules:
            x = mid_module(x, global_feature)

        for resnet, resnet2, upsample in self.up_modules:
            x = mx.concatenate([x, h.pop()], axis=-1)
            x = resnet(x, global_feature)
            x = resnet2(x, global_feature)
            x = upsample(x)

        for layer in self.final_conv:
            x = layer(x)
        return x

    def _check_inputs(
        self, sample: mx.array, local_cond: mx.array | None, global_cond: mx.array | None
    ) -> None:
        # Shapes are static Python ints, so these checks cost nothing under mx.compile.
        if sample.ndim != 3 or sample.shape[-1] != self.input_dim:
            raise ValueError(
                f"ConditionalUnet1D: sample must be (B, T, input_dim={self.input_dim}), "
                f"got {tuple(sample.shape)}"
            )
        factor = 2 ** (self.n_levels - 1)
        if sample.shape[1] % factor:
            raise ValueError(
                f"ConditionalUnet1D: horizon T={sample.shape[1]} must be divisible by {factor} "
                f"(2 ** (len(down_dims) - 1)); pad or change horizon"
            )
        if (global_cond is None) != (self.global_cond_dim is None):
            raise ValueError(
                f"ConditionalUnet1D: built with global_cond_dim={self.global_cond_dim} but called "
                f"with global_cond={'None' if global_cond is None else tuple(global_cond.shape)}"
            )
        if local_cond is not None and self.local_cond_encoder is None:
            raise ValueError(
                "ConditionalUnet1D: local_cond given but the model was built with "
                "local_cond_dim=None"
            )
