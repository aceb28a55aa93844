"""The torchvision image transforms upstream's encoders use, on ``(B, H, W, C)`` images."""

from collections.abc import Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from diffusion_policy_mlx.model.vision.crop_randomizer import center_crop

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # torch's bilinear with align_corners=False: source = (dst + 0.5) * in/out - 0.5, clamped
    # at 0; the upper neighbour is clamped at the last pixel.
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.maximum((np.arange(out_size, dtype=np.float32) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(src.astype(np.int32), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = (src - lo).astype(np.float32)
    return lo, hi, frac


class Resize(nn.Module):
    """Bilinear resize to a fixed ``(height, width)``, without antialiasing.

    Matches ``torchvision.transforms.Resize(size=(h, w))`` on tensors as upstream's pinned
    torchvision runs it (no antialias; ``F.interpolate(mode="bilinear", align_corners=False)``).

    Args:
        input_hw: ``(H, W)`` of the incoming images.
        size: ``(height, width)`` of the output.
    """

    def __init__(self, input_hw: Sequence[int], size: Sequence[int]):
        super().__init__()
        self.input_hw = tuple(int(v) for v in input_hw)
        self.size = tuple(int(v) for v in size)
        # Kept private on purpose: index tables, not state to train or checkpoint.
        self._rows = [mx.array(a) for a in _linear_taps(self.input_hw[0], self.size[0])]
        self._cols = [mx.array(a) for a in _linear_taps(self.input_hw[1], self.size[1])]

    def __call__(self, images: mx.array) -> mx.array:
        """``(B, H, W, C) -> (B, height, width, C)``."""
        if tuple(images.shape[1:3]) != self.input_hw:
            raise ValueError(
                f"Resize expects {self.input_hw} images, got {tuple(images.shape[1:3])}"
            )
        lo, hi, frac = self._rows
        frac = frac[:, None, None]
        x = images[:, lo] * (1 - frac) + images[:, hi] * frac
        lo, hi, frac = self._cols
        frac = frac[:, None]
        return x[:, :, lo] * (1 - frac) + x[:, :, hi] * frac


class CenterCrop(nn.Module):
    """``torchvision.transforms.CenterCrop(size=(h, w))`` on ``(B, H, W, C)`` images."""

    def __init__(self, size: Sequence[int]):
        super().__init__()
        self.size = tuple(int(v) for v in size)

    def __call__(self, images: mx.array) -> mx.array:
        return center_crop(images, *self.size)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` on the last axis (ImageNet statistics by default)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    def __call__(self, images: mx.array) -> mx.array:
        mean = mx.array(self.mean, dtype=images.dtype)
        std = mx.array(self.std, dtype=images.dtype)
        return (images - mean) / std
