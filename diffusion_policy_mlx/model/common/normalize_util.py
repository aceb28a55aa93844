"""Normalizers built from precomputed statistics rather than fitted on data."""

from collections.abc import Mapping

import numpy as np

from diffusion_policy_mlx.model.common.normalizer import (
    SingleFieldLinearNormalizer,
    limits_scale_offset,
)

Stats = Mapping[str, np.ndarray]


def get_range_normalizer_from_stat(
    stat: Stats, output_max: float = 1, output_min: float = -1, range_eps: float = 1e-7
) -> SingleFieldLinearNormalizer:
    """Map each feature's ``[stat['min'], stat['max']]`` onto ``[output_min, output_max]``.

    Features whose range is below ``range_eps`` are shifted to the middle of the output range.
    """
    scale, offset = limits_scale_offset(
        np.asarray(stat["min"]), np.asarray(stat["max"]), output_min, output_max, range_eps
    )
    return SingleFieldLinearNormalizer.create_manual(scale, offset, stat)


def get_image_range_normalizer() -> SingleFieldLinearNormalizer:
    """Images in ``[0, 1]`` to ``[-1, 1]`` (scale 2, offset -1), stats of a uniform ``[0, 1]``."""
    stat = {
        "min": np.array([0], dtype=np.float32),
        "max": np.array([1], dtype=np.float32),
        "mean": np.array([0.5], dtype=np.float32),
        "std": np.array([np.sqrt(1 / 12)], dtype=np.float32),
    }
    return SingleFieldLinearNormalizer.create_manual(
        np.array([2], dtype=np.float32), np.array([-1], dtype=np.float32), stat
    )


def get_identity_normalizer_from_stat(stat: Stats) -> SingleFieldLinearNormalizer:
    """Scale 1 and offset 0, keeping ``stat`` as the recorded input statistics."""
    example = np.asarray(stat["min"])
    return SingleFieldLinearNormalizer.create_manual(
        np.ones_like(example), np.zeros_like(example), stat
    )


def array_to_stats(arr: np.ndarray) -> dict[str, np.ndarray]:
    """Per-feature ``min``/``max``/``mean``/``std`` (population std) over axis 0 of ``(N, D)``."""
    return {
        "min": np.min(arr, axis=0),
        "max": np.max(arr, axis=0),
        "mean": np.mean(arr, axis=0),
        "std": np.std(arr, axis=0),
    }
