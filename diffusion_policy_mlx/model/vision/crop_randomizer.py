"""Random crops in training, a center crop in eval (upstream's ``CropRandomizer``), channels-last.

Images here are ``(B, H, W, C)``; the encoders convert upstream's ``(B, C, H, W)`` once at their
input. Constructor arguments keep upstream's meaning: ``input_shape`` is ``(C, H, W)``.
"""

from collections.abc import Sequence

import mlx.core as mx
import mlx.nn as nn

from diffusion_policy_mlx.common.distributed import sharded_draw


def center_crop_offsets(
    height: int, width: int, crop_height: int, crop_width: int
) -> tuple[int, int]:
    """Top-left corner of torchvision's ``center_crop`` (Python rounding, so 2.5 -> 2)."""
    return int(round((height - crop_height) / 2.0)), int(round((width - crop_width) / 2.0))


def center_crop(images: mx.array, crop_height: int, crop_width: int) -> mx.array:
    """``(..., H, W, C) -> (..., crop_height, crop_width, C)``, cropped around the center."""
    height, width = images.shape[-3], images.shape[-2]
    if crop_height > height or crop_width > width:
        raise ValueError(
            f"crop {crop_height}x{crop_width} is larger than the image {height}x{width}"
        )
    top, left = center_crop_offsets(height, width, crop_height, crop_width)
    return images[..., top : top + crop_height, left : left + crop_width, :]


def crop_image_from_indices(
    images: mx.array, crop_indices: mx.array, crop_height: int, crop_width: int
) -> mx.array:
    """Take ``N`` crops per image at given top-left corners.

    Args:
        images: ``(B, H, W, C)``.
        crop_indices: ``(B, N, 2)`` integer ``(row, col)`` of each crop's top-left pixel.

    Returns:
        ``(B, N, crop_height, crop_width, C)``.
    """
    batch = images.shape[0]
    rows = crop_indices[..., 0:1] + mx.arange(crop_height)  # (B, N, CH)
    cols = crop_indices[..., 1:2] + mx.arange(crop_width)  # (B, N, CW)
    b = mx.arange(batch).reshape(batch, 1, 1, 1)
    return images[b, rows[..., :, None], cols[..., None, :]]


def add_position_channels(images: mx.array) -> mx.array:
    """``(B, H, W, C) -> (B, H, W, C + 2)``: append ``row / H`` and ``col / W`` channels."""
    batch, height, width, _ = images.shape
    pos_y = mx.broadcast_to((mx.arange(height) / height)[:, None], (height, width))
    pos_x = mx.broadcast_to((mx.arange(width) / width)[None, :], (height, width))
    position = mx.stack([pos_y, pos_x], axis=-1).astype(images.dtype)
    return mx.concatenate([images, mx.broadcast_to(position, (batch, height, width, 2))], axis=-1)


def sample_random_image_crops(
    images: mx.array,
    crop_height: int,
    crop_width: int,
    num_crops: int,
    pos_enc: bool = False,
    key: mx.array | None = None,
) -> tuple[mx.array, mx.array]:
    """Sample ``num_crops`` uniformly placed crops from each image.

    Corners are drawn like upstream: ``floor(u * (H - crop_height))`` with ``u ~ U[0, 1)``, so
    the last possible corner ``H - crop_height`` itself is never chosen.

    Args:
        images: ``(B, H, W, C)``.
        pos_enc: append two channels ``(row / H, col / W)`` of each pixel's source location.
        key: optional MLX PRNG key; the global generator is used otherwise.

    Returns:
        crops ``(B, N, crop_height, crop_width, C (+2))`` and corners ``(B, N, 2)`` (int32).
    """
    batch, height, width, _ = images.shape
    if pos_enc:
        images = add_position_channels(images)
    u = sharded_draw(lambda shape: mx.random.uniform(shape=shape, key=key), (batch, num_crops, 2))
    limits = mx.array([height - crop_height, width - crop_width], dtype=mx.float32)
    corners = mx.floor(u * limits).astype(mx.int32)
    return crop_image_from_indices(images, corners, crop_height, crop_width), corners


class CropRandomizer(nn.Module):
    """Random crops in training, center crops in eval; crops are averaged back by :meth:`forward_out`.

    Args:
        input_shape: ``(C, H, W)`` of the images (upstream convention), without the batch.
        crop_height, crop_width: crop size; each must be smaller than the image's.
        num_crops: crops per image; they are stacked into the batch, ``B -> B * num_crops``.
        pos_enc: append two channels encoding each pixel's source location (training crops).
        fixed_eval_crop: center-crop in eval (upstream ``CropRandomizer``). False keeps random
            crops in eval too, as robomimic's own randomizer does.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        crop_height: int,
        crop_width: int,
        num_crops: int = 1,
        pos_enc: bool = False,
        fixed_eval_crop: bool = True,
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"CropRandomizer input_shape must be (C, H, W), got {tuple(input_shape)}"
            )
        if not (crop_height < input_shape[1] and crop_width < input_shape[2]):
            raise ValueError(
                f"CropRandomizer crop {crop_height}x{crop_width} must be smaller than the image "
                f"{input_shape[1]}x{input_shape[2]}"
            )
        self.input_shape = tuple(input_shape)
        self.crop_height = crop_height
        self.crop_width = crop_width
        self.num_crops = num_crops
        self.pos_enc = pos_enc
        self.fixed_eval_crop = fixed_eval_crop

    def output_shape_in(self, input_shape: Sequence[int] | None = None) -> list[int]:
        """``(C, H, W)`` of what :meth:`forward_in` returns (upstream convention)."""
        channels = self.input_shape[0] + 2 if self.pos_enc else self.input_shape[0]
        return [channels, self.crop_height, self.crop_width]

    def output_shape_out(self, input_shape: Sequence[int]) -> list[int]:
        return list(input_shape)

    def forward_in(self, inputs: mx.array, key: mx.array | None = None) -> mx.array:
        """``(B, H, W, C) -> (B * num_crops, crop_height, crop_width, C)``."""
        if self.training or not self.fixed_eval_crop:
            crops, _ = sample_random_image_crops(
                inputs, self.crop_height, self.crop_width, self.num_crops, self.pos_enc, key=key
            )
            return crops.reshape(-1, *crops.shape[2:])
        # Upstream drops the position channels here, so eval features would have C channels
        # where training had C + 2; keep them so one network serves both modes.
        if self.pos_enc:
            inputs = add_position_channels(inputs)
        out = center_crop(inputs, self.crop_height, self.crop_width)
        if self.num_crops > 1:
            out = mx.repeat(out, self.num_crops, axis=0)
        return out

    def forward_out(self, inputs: mx.array) -> mx.array:
        """``(B * num_crops, ...) -> (B, ...)``: the mean over each image's crops."""
        if self.num_crops <= 1:
            return inputs
        return inputs.reshape(-1, self.num_crops, *inputs.shape[1:]).mean(axis=1)

    def __call__(self, inputs: mx.array, key: mx.array | None = None) -> mx.array:
        return self.forward_in(inputs, key=key)
