"""Normalizers from statistics: image range, range-from-stat, identity."""

from pathlib import Path

import mlx.core as mx
import numpy as np
from safetensors.numpy import load_file

from diffusion_policy_mlx.model.common.normalize_util import (
    array_to_stats,
    get_identity_normalizer_from_stat,
    get_image_range_normalizer,
    get_range_normalizer_from_stat,
)


def test_image_range_normalizer_matches_upstream(fixtures_dir: Path):
    ref = load_file(fixtures_dir / "normalizer_pusht_image.safetensors")
    state = get_image_range_normalizer().state_dict()
    for name, value in state.items():
        expected = ref[f"state_dict.params_dict.image.{name.removeprefix('params_dict.')}"]
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, expected, err_msg=name)
    np.testing.assert_allclose(state["params_dict.input_stats.std"], [np.sqrt(1 / 12)], rtol=1e-7)
    image = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)  # (H, W) with one channel feature
    out = get_image_range_normalizer().normalize(image)
    np.testing.assert_array_equal(np.array(out), [[-1.0, -0.5], [0.0, 1.0]])


def test_range_normalizer_from_stat_hand_derived():
    stat = {
        "min": np.array([0.0, 5.0], np.float32),
        "max": np.array([4.0, 5.0], np.float32),
        "mean": np.array([1.0, 5.0], np.float32),
        "std": np.array([1.0, 0.0], np.float32),
    }
    n = get_range_normalizer_from_stat(stat)
    # [0, 4] -> [-1, 1]; the constant feature 5 is shifted to 0 with scale 1
    np.testing.assert_allclose(np.array(n.params_dict["scale"]), [0.5, 1.0])
    np.testing.assert_allclose(np.array(n.params_dict["offset"]), [-1.0, -5.0])
    x = mx.array([[0.0, 5.0], [4.0, 5.0], [2.0, 5.0]])
    np.testing.assert_allclose(np.array(n.normalize(x)), [[-1, 0], [1, 0], [0, 0]])
    np.testing.assert_array_equal(np.array(n.get_input_stats()["max"]), [4.0, 5.0])
    n01 = get_range_normalizer_from_stat(stat, output_max=1, output_min=0)
    np.testing.assert_allclose(np.array(n01.params_dict["offset"]), [0.0, -4.5])


def test_identity_normalizer_and_array_to_stats():
    arr = np.array([[1.0, -2.0], [3.0, 2.0]], np.float32)
    stat = array_to_stats(arr)
    np.testing.assert_array_equal(stat["mean"], [2.0, 0.0])
    np.testing.assert_array_equal(stat["std"], [1.0, 2.0])  # population std, as upstream
    n = get_identity_normalizer_from_stat(stat)
    np.testing.assert_array_equal(np.array(n.normalize(arr)), arr)
    np.testing.assert_array_equal(np.array(n.get_input_stats()["min"]), [1.0, -2.0])
