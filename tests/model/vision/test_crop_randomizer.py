"""CropRandomizer: center crops in eval, in-bounds random crops in training, crop averaging."""

import mlx.core as mx
import numpy as np
import pytest

from diffusion_policy_mlx.model.vision.crop_randomizer import (
    CropRandomizer,
    center_crop,
    center_crop_offsets,
    crop_image_from_indices,
    sample_random_image_crops,
)


def ramp(batch: int, height: int, width: int, channels: int) -> mx.array:
    return mx.arange(batch * height * width * channels, dtype=mx.float32).reshape(
        batch, height, width, channels
    )


def test_center_crop_offsets_follow_torchvision_rounding():
    assert center_crop_offsets(96, 96, 76, 76) == (10, 10)
    assert center_crop_offsets(84, 96, 76, 84) == (4, 6)
    # Python's round: (81 - 76) / 2 = 2.5 -> 2, (83 - 76) / 2 = 3.5 -> 4
    assert center_crop_offsets(81, 83, 76, 76) == (2, 4)


def test_eval_takes_the_center_crop():
    images = ramp(2, 96, 96, 3)
    crop = CropRandomizer((3, 96, 96), 76, 76)
    crop.eval()
    out = crop(images)
    assert out.shape == (2, 76, 76, 3)
    np.testing.assert_array_equal(np.array(out), np.array(images)[:, 10:86, 10:86, :])
    # first pixel of the crop is (row 10, col 10) of image 0: (10 * 96 + 10) * 3
    assert out[0, 0, 0, 0].item() == (10 * 96 + 10) * 3


def test_training_crops_are_slices_of_the_source_within_bounds():
    images = ramp(8, 12, 10, 2)
    crops, corners = sample_random_image_crops(images, 5, 4, num_crops=3, key=mx.random.key(1))
    assert crops.shape == (8, 3, 5, 4, 2)
    corners = np.array(corners)
    # upstream draws floor(u * (H - ch)): corners never reach H - ch itself
    assert corners[..., 0].min() >= 0 and corners[..., 0].max() < 12 - 5
    assert corners[..., 1].min() >= 0 and corners[..., 1].max() < 10 - 4
    source = np.array(images)
    for b in range(8):
        for n in range(3):
            r, c = corners[b, n]
            np.testing.assert_array_equal(np.array(crops[b, n]), source[b, r : r + 5, c : c + 4])


def test_random_crops_use_the_key_and_cover_the_range():
    images = ramp(256, 20, 20, 1)
    crop = CropRandomizer((1, 20, 20), 16, 16)
    crop.train()
    a, b = crop(images, key=mx.random.key(3)), crop(images, key=mx.random.key(3))
    np.testing.assert_array_equal(np.array(a), np.array(b))
    _, corners = sample_random_image_crops(images, 16, 16, 1, key=mx.random.key(4))
    assert set(np.array(corners).reshape(-1).tolist()) == {0, 1, 2, 3}


def test_crop_image_from_indices_values():
    images = ramp(1, 4, 5, 1)
    out = crop_image_from_indices(images, mx.array([[[1, 2]]]), 2, 3)
    assert np.array(out)[0, 0, :, :, 0].tolist() == [[7, 8, 9], [12, 13, 14]]


def test_num_crops_stack_into_batch_and_forward_out_averages():
    crop = CropRandomizer((3, 10, 10), 6, 6, num_crops=4)
    crop.train()
    out = crop(ramp(2, 10, 10, 3))
    assert out.shape == (8, 6, 6, 3)
    features = mx.array([[1.0], [2.0], [3.0], [6.0], [0.0], [0.0], [4.0], [4.0]])
    assert crop.forward_out(features).tolist() == [[3.0], [2.0]]
    crop.eval()
    out = crop(ramp(2, 10, 10, 3))
    np.testing.assert_array_equal(np.array(out[0]), np.array(out[3]))
    assert crop.output_shape_in() == [3, 6, 6]
    assert crop.output_shape_out([64]) == [64]


def test_pos_enc_appends_source_coordinates():
    crop = CropRandomizer((1, 8, 10), 4, 5, pos_enc=True)
    crop.train()
    crops, corners = sample_random_image_crops(
        mx.zeros((2, 8, 10, 1)), 4, 5, 1, pos_enc=True, key=mx.random.key(0)
    )
    r, c = np.array(corners)[0, 0]
    np.testing.assert_allclose(np.array(crops[0, 0, :, 0, 1]), (r + np.arange(4)) / 8)
    np.testing.assert_allclose(np.array(crops[0, 0, 0, :, 2]), (c + np.arange(5)) / 10)
    assert crop.output_shape_in() == [3, 4, 5]
    crop.eval()
    out = crop(mx.zeros((1, 8, 10, 1)))
    assert out.shape == (1, 4, 5, 3)
    np.testing.assert_allclose(np.array(out[0, :, 0, 1]), np.arange(2, 6) / 8)


def test_fixed_eval_crop_false_stays_random_in_eval():
    images = ramp(64, 20, 20, 1)
    crop = CropRandomizer((1, 20, 20), 10, 10, fixed_eval_crop=False)
    crop.eval()
    out = np.array(crop(images, key=mx.random.key(0)))
    centered = np.array(center_crop(images, 10, 10))
    assert not np.array_equal(out, centered)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        CropRandomizer((96, 96), 76, 76)
    with pytest.raises(ValueError, match="smaller than the image 96x96"):
        CropRandomizer((3, 96, 96), 96, 76)
    with pytest.raises(ValueError, match="larger than the image"):
        center_crop(mx.zeros((1, 4, 4, 1)), 5, 2)
