"""Resize (against torch's bilinear), CenterCrop and ImageNet Normalize on channels-last images."""

import mlx.core as mx
import numpy as np
import pytest

from diffusion_policy_mlx.model.vision.transforms import CenterCrop, Normalize, Resize


def nhwc(x: np.ndarray) -> mx.array:
    return mx.array(x.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("name,size", [("resize_up", (11, 13)), ("resize_down", (3, 4))])
def test_resize_matches_torch_bilinear(vision_ref, name, size):
    out = Resize((7, 9), size)(nhwc(vision_ref["input.small"]))
    expected = vision_ref[f"output.{name}"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.array(out), expected, rtol=1e-6, atol=1e-6)


def test_resize_hand_values():
    # 2 -> 4 pixels: sources at -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to the last)
    row = mx.array([[0.0, 4.0]]).reshape(1, 1, 2, 1)
    out = Resize((1, 2), (1, 4))(row)
    assert np.array(out).reshape(-1).tolist() == [0.0, 1.0, 3.0, 4.0]
    same = mx.random.uniform(shape=(2, 5, 6, 3))
    np.testing.assert_array_equal(np.array(Resize((5, 6), (5, 6))(same)), np.array(same))


def test_resize_rejects_other_sizes():
    with pytest.raises(ValueError, match=r"expects \(7, 9\)"):
        Resize((7, 9), (3, 3))(mx.zeros((1, 8, 9, 3)))


def test_center_crop_and_normalize():
    image = mx.arange(6 * 6, dtype=mx.float32).reshape(1, 6, 6, 1)
    # top = round(4 / 2) = 2, left = round(3 / 2) = round(1.5) = 2 (torchvision's rounding)
    assert np.array(CenterCrop((2, 3))(image))[0, :, :, 0].tolist() == [[14, 15, 16], [20, 21, 22]]
    pixel = mx.array([0.485, 0.456 + 0.224, 0.406 - 2 * 0.225]).reshape(1, 1, 1, 3)
    np.testing.assert_allclose(np.array(Normalize()(pixel)).reshape(-1), [0, 1, -2], atol=1e-6)
