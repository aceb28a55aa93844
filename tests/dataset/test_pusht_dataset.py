"""PushTLowdimDataset against upstream's samples, split and normalizer on the real PushT data."""

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file

from diffusion_policy_mlx.common.replay_buffer import ReplayBuffer
from diffusion_policy_mlx.dataset.pusht_dataset import PushTLowdimDataset

# task/pusht_lowdim.yaml with the unet lowdim workspace: horizon 16, n_obs 2, n_action 8
UPSTREAM_KWARGS = dict(
    horizon=16, pad_before=1, pad_after=7, seed=42, val_ratio=0.02, max_train_episodes=90
)


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
    return load_file(fixtures_dir / "normalizer_pusht.safetensors")


@pytest.fixture(scope="module")
def dataset(pusht_zarr):
    return PushTLowdimDataset(str(pusht_zarr), **UPSTREAM_KWARGS)


def test_lengths_and_split(dataset, fixture):
    val = dataset.get_validation_dataset()
    assert len(dataset) == 10726 and len(val) == 13482
    np.testing.assert_array_equal(
        np.nonzero(dataset.train_mask)[0], fixture["output.train_episode_idx"]
    )
    np.testing.assert_array_equal(
        np.nonzero(val.train_mask)[0], fixture["output.val_dataset_episode_idx"]
    )
    np.testing.assert_array_equal(dataset.sampler.indices, fixture["output.train_sampler_indices"])
    np.testing.assert_array_equal(val.sampler.indices, fixture["output.val_sampler_indices"])
    assert val.replay_buffer is dataset.replay_buffer


@pytest.mark.parametrize(
    "split,idx",
    [
        ("train", 0),
        ("train", 1),
        ("train", 100),
        ("train", 5000),
        ("train", 10725),
        ("val", 0),
        ("val", 13481),
    ],
)
def test_samples_equal_upstream(dataset, fixture, split, idx):
    ds = dataset if split == "train" else dataset.get_validation_dataset()
    sample = ds[idx]
    assert sample["obs"].shape == (16, 20) and sample["obs"].dtype == np.float32
    assert sample["action"].shape == (16, 2) and sample["action"].dtype == np.float32
    np.testing.assert_array_equal(sample["obs"], fixture[f"output.{split}_sample_{idx}.obs"])
    np.testing.assert_array_equal(sample["action"], fixture[f"output.{split}_sample_{idx}.action"])


def test_batch_equals_stacked_samples(dataset):
    idxs = np.array([10725, 0, 5000, 1, 1])
    batch = dataset.__getitems__(idxs)
    assert batch["obs"].shape == (5, 16, 20)
    for row, i in enumerate(idxs):
        np.testing.assert_array_equal(batch["obs"][row], dataset[i]["obs"])
        np.testing.assert_array_equal(batch["action"][row], dataset[i]["action"])


def test_normalizer_equals_upstream(dataset, fixture):
    normalizer = dataset.get_normalizer()
    state = normalizer.state_dict()
    assert sorted(state) == sorted(
        k.removeprefix("state_dict.") for k in fixture if k.startswith("state_dict.")
    )
    for name, value in state.items():
        expected = fixture[f"state_dict.{name}"]
        if name.endswith(("mean", "std")):
            np.testing.assert_allclose(value, expected, rtol=1e-5)
        else:
            np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-6)
    for idx in (0, 1, 100, 5000, 10725):
        normalized = normalizer.normalize(dataset[idx])
        for key in ("obs", "action"):
            np.testing.assert_allclose(
                np.array(normalized[key]),
                fixture[f"output.train_sample_{idx}.normalized.{key}"],
                atol=1e-5,
            )


def test_get_all_actions(dataset, pusht_zarr):
    actions = dataset.get_all_actions()
    assert isinstance(actions, mx.array) and actions.shape == (25650, 2)
    np.testing.assert_array_equal(np.array(actions), dataset.replay_buffer["action"])


def test_check_dims(dataset):
    dataset.check_dims(obs_dim=20, action_dim=2)
    with pytest.raises(ValueError, match=r"obs the per-step shape \(18,\).*yields \(20,\)"):
        dataset.check_dims(obs_dim=18, action_dim=2)


def test_zarr_path_is_relative_to_the_working_directory(pusht_zarr, monkeypatch):
    monkeypatch.chdir(pusht_zarr.parents[2])  # the folder holding data/pusht/...
    ds = PushTLowdimDataset("data/pusht/pusht_cchi_v7_replay.zarr", horizon=2)
    assert len(ds) == 25650 - 206  # every window of 2 steps, no padding, no split


def test_missing_dataset_names_path_and_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        PushTLowdimDataset("data/pusht/pusht_cchi_v7_replay.zarr", **UPSTREAM_KWARGS)
    message = str(error.value)
    assert "'data/pusht/pusht_cchi_v7_replay.zarr'" in message
    assert str(tmp_path / "data/pusht/pusht_cchi_v7_replay.zarr") in message
    assert "`python -m diffusion_policy_mlx.data download pusht`" in message


def test_bad_zarr_contents_are_named(pusht_zarr, tmp_path):
    with pytest.raises(KeyError, match="no array data/keypoints"):
        PushTLowdimDataset(str(pusht_zarr), obs_key="keypoints")
    buffer = ReplayBuffer.create_empty_numpy()
    buffer.add_episode(
        {"keypoint": np.zeros((4, 9, 2)), "state": np.zeros((4, 1)), "action": np.zeros((4, 2))}
    )
    buffer.save_to_path(tmp_path / "bad.zarr")
    with pytest.raises(ValueError, match=r"data/state has shape \(4, 1\)"):
        PushTLowdimDataset(str(tmp_path / "bad.zarr"))
