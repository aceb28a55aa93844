"""PushTImageDataset against upstream's samples and normalizer (loads the 2.8 GB image array once)."""

import numpy as np
import pytest
from safetensors.numpy import load_file

from diffusion_policy_mlx.common.replay_buffer import ReplayBuffer
from diffusion_policy_mlx.dataset.pusht_image_dataset import PushTImageDataset

SHAPE_META = {
    "obs": {
        "image": {"shape": [3, 96, 96], "type": "rgb"},
        "agent_pos": {"shape": [2], "type": "low_dim"},
    },
    "action": {"shape": [2]},
}


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
    return load_file(fixtures_dir / "normalizer_pusht_image.safetensors")


def pusht_image_dataset(zarr, **kwargs) -> PushTImageDataset:
    """The dataset as upstream's PushT image task config builds it."""
    return PushTImageDataset(
        str(zarr),
        horizon=16,
        pad_before=1,
        pad_after=7,
        seed=42,
        val_ratio=0.02,
        max_train_episodes=90,
        **kwargs,
    )


@pytest.fixture(scope="module")
def dataset(pusht_zarr):
    return pusht_image_dataset(pusht_zarr)


def test_lengths_and_split(dataset, fixture):
    val = dataset.get_validation_dataset()
    assert len(dataset) == int(fixture["output.len_train"][0]) == 10726
    assert len(val) == int(fixture["output.len_val"][0]) == 13482
    np.testing.assert_array_equal(
        np.nonzero(dataset.train_mask)[0], fixture["output.train_episode_idx"]
    )
    np.testing.assert_array_equal(
        np.nonzero(val.train_mask)[0], fixture["output.val_dataset_episode_idx"]
    )


@pytest.mark.parametrize("idx", [0, 5000])
def test_samples_equal_upstream(dataset, fixture, idx):
    sample = dataset[idx]
    image = sample["obs"]["image"]
    assert image.shape == (16, 3, 96, 96) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    # stored as uint8 k: upstream's float32 image is exactly k / 255
    expected = fixture[f"output.train_sample_{idx}.obs.image_uint8"] / np.float32(255)
    np.testing.assert_array_equal(image, expected)
    np.testing.assert_array_equal(
        sample["obs"]["agent_pos"], fixture[f"output.train_sample_{idx}.obs.agent_pos"]
    )
    np.testing.assert_array_equal(sample["action"], fixture[f"output.train_sample_{idx}.action"])


def test_padding_and_raw_frame(dataset, fixture):
    # sample 0 starts one step before its episode: steps 0 and 1 are both the first frame
    image = dataset[0]["obs"]["image"]
    raw = fixture["output.train_sample_0.obs.image_raw_t1_uint8"].astype(np.float32)
    np.testing.assert_array_equal(image[0], image[1])
    np.testing.assert_array_equal(image[1], np.moveaxis(raw, -1, 0) / 255)


def test_batch_equals_stacked_samples(dataset):
    idxs = [5000, 0, 10725]
    batch = dataset.__getitems__(idxs)
    assert batch["obs"]["image"].shape == (3, 16, 3, 96, 96)
    for row, i in enumerate(idxs):
        sample = dataset[i]
        np.testing.assert_array_equal(batch["obs"]["image"][row], sample["obs"]["image"])
        np.testing.assert_array_equal(batch["obs"]["agent_pos"][row], sample["obs"]["agent_pos"])
        np.testing.assert_array_equal(batch["action"][row], sample["action"])


def test_n_obs_steps_keeps_the_first_observations(dataset, pusht_zarr):
    short = pusht_image_dataset(pusht_zarr, n_obs_steps=2)
    idxs = [0, 5000, 10725]
    full, part = dataset.__getitems__(idxs), short.__getitems__(idxs)
    assert part["obs"]["image"].shape == (3, 2, 3, 96, 96)
    for key in ("image", "agent_pos"):
        np.testing.assert_array_equal(part["obs"][key], full["obs"][key][:, :2])
    np.testing.assert_array_equal(part["action"], full["action"])
    val_full = dataset.get_validation_dataset().__getitems__([0, 7])
    val_part = short.get_validation_dataset().__getitems__([0, 7])
    np.testing.assert_array_equal(val_part["obs"]["image"], val_full["obs"]["image"][:, :2])
    short.check_shape_meta(SHAPE_META)


def test_sampling_leaves_the_buffer_untouched(dataset):
    first = dataset.replay_buffer["img"][dataset.sampler.indices[0, 0]].copy()
    dataset[0], dataset.__getitems__([0, 0])
    np.testing.assert_array_equal(
        dataset.replay_buffer["img"][dataset.sampler.indices[0, 0]], first
    )
    assert first.max() > 1  # still 0..255


def test_normalizer_equals_upstream(dataset, fixture):
    normalizer = dataset.get_normalizer()
    state = normalizer.state_dict()
    assert sorted(state) == sorted(
        k.removeprefix("state_dict.") for k in fixture if k.startswith("state_dict.")
    )
    for name, value in state.items():
        rtol = 1e-5 if name.endswith(("mean", "std")) else 1e-6
        np.testing.assert_allclose(value, fixture[f"state_dict.{name}"], rtol=rtol, atol=1e-6)
    normalized = normalizer.normalize(
        {"agent_pos": dataset[0]["obs"]["agent_pos"], "action": dataset[0]["action"]}
    )
    np.testing.assert_allclose(
        np.array(normalized["agent_pos"]),
        fixture["output.train_sample_0.normalized.agent_pos"],
        atol=1e-5,
    )
    np.testing.assert_allclose(
        np.array(normalized["action"]),
        fixture["output.train_sample_0.normalized.action"],
        atol=1e-5,
    )


def test_check_shape_meta(dataset):
    dataset.check_shape_meta(SHAPE_META)
    wrong = {**SHAPE_META, "obs": {**SHAPE_META["obs"], "image": {"shape": [3, 84, 84]}}}
    with pytest.raises(
        ValueError, match=r"obs.image the per-step shape \(3, 84, 84\).*yields \(3, 96, 96\)"
    ):
        dataset.check_shape_meta(wrong)
    renamed = {"obs": {"rgb": {"shape": [3, 96, 96]}}, "action": {"shape": [2]}}
    with pytest.raises(KeyError, match=r"obs.rgb.*'obs.image', 'obs.agent_pos', 'action'"):
        dataset.check_shape_meta(renamed)


def test_bad_zarr_contents_are_named(tmp_path):
    buffer = ReplayBuffer.create_empty_numpy()
    buffer.add_episode(
        {
            "img": np.zeros((3, 8, 8, 1), np.float32),
            "state": np.zeros((3, 5)),
            "action": np.zeros((3, 2)),
        }
    )
    buffer.save_to_path(tmp_path / "gray.zarr")
    with pytest.raises(
        ValueError, match=r"data/img has shape \(3, 8, 8, 1\); expected \(N, H, W, 3\)"
    ):
        PushTImageDataset(str(tmp_path / "gray.zarr"))
    buffer = ReplayBuffer.create_empty_numpy()
    buffer.add_episode({"img": np.zeros((3, 8, 8, 3), np.float32), "action": np.zeros((3, 2))})
    buffer.save_to_path(tmp_path / "nostate.zarr")
    with pytest.raises(KeyError, match="no array data/state"):
        PushTImageDataset(str(tmp_path / "nostate.zarr"))


def _image_store(path, img: np.ndarray):
    buffer = ReplayBuffer.create_empty_numpy()
    n = len(img)
    buffer.add_episode({"img": img, "state": np.zeros((n, 5)), "action": np.zeros((n, 2))})
    return buffer.save_to_path(path)


@pytest.mark.parametrize(
    ("dtype", "high", "scale"),
    [(np.uint8, 255, 255.0), (np.float32, 255.0, 255.0), (np.float32, 1.0, 1.0)],
)
def test_images_are_scaled_to_unit_range_once(tmp_path, dtype, high, scale):
    rng = np.random.default_rng(0)
    img = (rng.uniform(size=(4, 8, 8, 3)) * high).astype(dtype)
    img.flat[0] = high  # the range's top is in the data
    ds = PushTImageDataset(str(_image_store(tmp_path / "imgs.zarr", img)), horizon=2)
    assert ds.image_scale == scale
    image = ds[0]["obs"]["image"]
    assert image.dtype == np.float32 and image.max() <= 1.0
    np.testing.assert_allclose(image[0], np.moveaxis(img[0], -1, 0) / scale, rtol=1e-6)
    batch = ds.__getitems__([0, 1])["obs"]["image"]
    np.testing.assert_allclose(batch[1, 1], np.moveaxis(img[2], -1, 0) / scale, rtol=1e-6)


@pytest.mark.parametrize(
    ("img", "match"),
    [
        (np.full((3, 8, 8, 3), 300.0, np.float32), r"data/img holds values from 300\.0 to 300\.0"),
        (np.full((3, 8, 8, 3), -1.0, np.float32), r"data/img holds values from -1\.0"),
        (np.zeros((3, 8, 8, 3), np.int16), "data/img has dtype int16; images must be uint8"),
    ],
)
def test_images_out_of_range_are_refused(tmp_path, img, match):
    with pytest.raises(ValueError, match=match):
        PushTImageDataset(str(_image_store(tmp_path / "bad.zarr", img)), horizon=2)


def test_upstream_float_images_are_divided_by_255(dataset):
    assert dataset.image_scale == 255.0
