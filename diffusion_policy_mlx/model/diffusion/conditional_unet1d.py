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

    @property
    def film_channels(self) -> int:
        """Width of this block's FiLM features: ``2 * out_channels`` with a scale, else
        ``out_channels``."""
        return self.cond_encoder[1].weight.shape[0]

    def film_parts(
        self, time_feature: mx.array, global_cond: mx.array | None
    ) -> tuple[mx.array, mx.array | None]:
        """The FiLM features split into what depends on the diffusion step and what on the
        global condition: ``cond_encoder(concat(t, g)) == time_part + cond_part``, because Mish
        acts elementwise and the Linear is linear. ``time_feature`` (..., dsed) -> (...,
        film_channels) with the bias; ``global_cond`` (B, G) -> (B, film_channels)."""
        mish, linear = self.cond_encoder
        split = time_feature.shape[-1]
        time_part = mish(time_feature) @ linear.weight[:, :split].T + linear.bias
        if global_cond is None:
            return time_part, None
        return time_part, mish(global_cond) @ linear.weight[:, split:].T

    def __call__(
        self, x: mx.array, cond: mx.array | None, film: mx.array | None = None
    ) -> mx.array:
        """``film`` (B, film_channels): this block's FiLM features computed beforehand (see
        :meth:`ConditionalUnet1D.film_tables`); ``cond`` is then not read."""
        if film is None:
            embed = cond
            for layer in self.cond_encoder:
                embed = layer(embed)
        else:
            embed = film
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

    def film_blocks(self) -> list[ConditionalResidualBlock1D]:
        """The residual blocks in the order a forward pass conditions them."""
        blocks = []
        for idx, (resnet, resnet2, _) in enumerate(self.down_modules):
            blocks.append(resnet)
            if idx == 0 and self.local_cond_encoder is not None:
                blocks.append(self.local_cond_encoder[0])
            blocks.append(resnet2)
        blocks.extend(self.mid_modules)
        for resnet, resnet2, _ in self.up_modules:
            blocks.extend([resnet, resnet2])
        return blocks

    def film_tables(
        self, timesteps: mx.array, global_cond: mx.array | None = None
    ) -> tuple[mx.array, mx.array | None]:
        """Every block's FiLM features for a whole denoising loop, ahead of it.

        ``timesteps`` (S,), ``global_cond`` (B, global_cond_dim) -> ``film_time`` (S, F) and
        ``film_cond`` (B, F) or None, F the blocks' FiLM widths concatenated in
        :meth:`film_blocks` order. ``self(x, t, film_time=film_time[s], film_cond=film_cond)``
        equals ``self(x, timesteps[s], global_cond=global_cond)`` (up to float rounding)
        without the diffusion-step encoder and the blocks' condition encoders: at batch 1 on a
        GPU those are about a third of a denoising step's kernel launches.
        """
        time_feature = self.encode_timestep(timesteps, timesteps.shape[0])
        parts = [block.film_parts(time_feature, global_cond) for block in self.film_blocks()]
        film_time = mx.concatenate([time for time, _ in parts], axis=-1)
        if global_cond is None:
            return film_time, None
        return film_time, mx.concatenate([cond for _, cond in parts], axis=-1)

    def __call__(
        self,
        sample: mx.array,
        timestep: mx.array | int | float,
        local_cond: mx.array | None = None,
        global_cond: mx.array | None = None,
        film_time: mx.array | None = None,
        film_cond: mx.array | None = None,
        **kwargs,
    ) -> mx.array:
        """``film_time`` (F,) and ``film_cond`` (B, F): this step's row of
        :meth:`film_tables` and its condition part, given instead of computing the FiLM
        features from ``timestep`` and ``global_cond`` (then not read)."""
        if film_time is None:
            self._check_inputs(sample, local_cond, global_cond)
            global_feature = self.encode_timestep(timestep, sample.shape[0])
            if global_cond is not None:
                global_feature = mx.concatenate([global_feature, global_cond], axis=-1)
            # Every block's FiLM encoder is Mish then its Linear on this same feature: one Mish
            # for all (outside mx.compile nothing merges the repeats; each is a few operations).
            blocks = self.film_blocks()
            activated = blocks[0].cond_encoder[0](global_feature)
            films = {id(block): block.cond_encoder[1](activated) for block in blocks}
        else:
            self._check_inputs(sample, local_cond, film_cond)
            global_feature = None
            film = film_time if film_cond is None else film_time + film_cond
            film = mx.broadcast_to(film, (sample.shape[0], film.shape[-1]))
            films, start = {}, 0
            for block in self.film_blocks():
                films[id(block)] = film[:, start : start + block.film_channels]
                start += block.film_channels

        x = sample
        h = []
        for idx, (resnet, resnet2, downsample) in enumerate(self.down_modules):
            x = resnet(x, global_feature, films.get(id(resnet)))
            if idx == 0 and local_cond is not None:
                local = self.local_cond_encoder[0]
                x = x + local(local_cond, global_feature, films.get(id(local)))
            x = resnet2(x, global_feature, films.get(id(resnet2)))
            h.append(x)
            x = downsample(x)

        for mid_module in self.mid_modules:
            x = mid_module(x, global_feature, films.get(id(mid_module)))

        for resnet, resnet2, upsample in self.up_modules:
            x = mx.concatenate([x, h.pop()], axis=-1)
            x = resnet(x, global_feature, films.get(id(resnet)))
            x = resnet2(x, global_feature, films.get(id(resnet2)))
            x = upsample(x)

        block, head = self.final_conv
        return head(block(x))

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
                f"with global_cond (or film_cond)="
                f"{'None' if global_cond is None else tuple(global_cond.shape)}"
            )
        if local_cond is not None and self.local_cond_encoder is None:
            raise ValueError(
                "ConditionalUnet1D: local_cond given but the model was built with "
                "local_cond_dim=None"
            )
