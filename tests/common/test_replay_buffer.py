"""ReplayBuffer: reading upstream's PushT zarr, recording episodes, writing upstream's layout."""

import json

import numcodecs
import numpy as np
import pytest
from safetensors.numpy import load_file

from diffusion_policy_mlx.common.replay_buffer import ReplayBuffer


def _episode(length: int, start: float) -> dict[str, np.ndarray]:
    t = np.arange(length, dtype=np.float32)[:, None] + start
    return {
        "action": np.concatenate([t, -t], axis=1),
        "img": np.broadcast_to(t[:, :, None, None], (length, 1, 4, 3)).astype(np.uint8),
    }


@pytest.fixture(scope="module")
def pusht_buffer(pusht_zarr):
    return ReplayBuffer.copy_from_path(pusht_zarr, keys=["state", "action"])


def test_copy_from_path_reads_upstream_pusht(pusht_buffer, pusht_zarr, fixtures_dir):
    fixture = load_file(fixtures_dir / "normalizer_pusht.safetensors")
    assert pusht_buffer.backend == "numpy"
    assert pusht_buffer.n_episodes == 206
    assert pusht_buffer.n_steps == 25650
    np.testing.assert_array_equal(pusht_buffer.episode_ends, fixture["output.episode_ends"])
    assert sorted(pusht_buffer.keys()) == ["action", "state"]
    assert pusht_buffer["state"].shape == (25650, 5)
    assert pusht_buffer["state"].dtype == np.float32
    lengths = pusht_buffer.episode_lengths
    assert lengths.sum() == 25650 and lengths[0] == 161 and lengths[1] == 279 - 161
    episode = pusht_buffer.get_episode(1)
    np.testing.assert_array_equal(episode["action"], pusht_buffer["action"][161:279])
    np.testing.assert_array_equal(
        pusht_buffer.get_episode(-1)["state"], pusht_buffer["state"][25650 - lengths[-1] :]
    )
    idxs = pusht_buffer.get_episode_idxs()
    assert idxs[160] == 0 and idxs[161] == 1 and idxs[-1] == 205


def test_copy_from_path_all_keys_and_errors(pusht_zarr, tmp_path):
    buffer = ReplayBuffer.copy_from_path(pusht_zarr, keys=["n_contacts"])
    assert list(buffer.keys()) == ["n_contacts"]
    with pytest.raises(KeyError, match=r"no array data/velocity.*'action'"):
        ReplayBuffer.copy_from_path(pusht_zarr, keys=["action", "velocity"])
    with pytest.raises(FileNotFoundError, match="nowhere.zarr"):
        ReplayBuffer.copy_from_path(tmp_path / "nowhere.zarr")


def test_numpy_add_get_drop_pop():
    buffer = ReplayBuffer.create_empty_numpy()
    assert buffer.n_episodes == 0 and buffer.n_steps == 0
    buffer.add_episode(_episode(3, 0))
    buffer.add_episode(_episode(5, 10))
    np.testing.assert_array_equal(buffer.episode_ends, [3, 8])
    assert buffer["action"].shape == (8, 2)
    np.testing.assert_array_equal(buffer.get_episode(1)["action"][:, 0], [10, 11, 12, 13, 14])
    assert buffer.get_episode_slice(1) == slice(3, 8)
    popped = buffer.pop_episode()
    np.testing.assert_array_equal(popped["action"][:, 1], [-10, -11, -12, -13, -14])
    assert buffer.n_steps == 3 and buffer["img"].shape == (3, 1, 4, 3)
    buffer.drop_episode()
    assert buffer.n_episodes == 0 and buffer["action"].shape == (0, 2)
    with pytest.raises(IndexError):
        buffer.drop_episode()


def test_add_episode_rejects_inconsistent_data():
    buffer = ReplayBuffer.create_empty_numpy()
    buffer.add_episode(_episode(3, 0))
    with pytest.raises(ValueError, match="disagree on the episode length"):
        buffer.add_episode({"action": np.zeros((2, 2)), "img": np.zeros((3, 1, 4, 3))})
    with pytest.raises(ValueError, match=r"'action' has per-step shape \(3,\)"):
        buffer.add_episode({"action": np.zeros((2, 3)), "img": np.zeros((2, 1, 4, 3))})
    with pytest.raises(KeyError, match="got keys"):
        buffer.add_episode({"action": np.zeros((2, 2))})


def test_constructor_rejects_bad_layout():
    with pytest.raises(KeyError, match="'meta'"):
        ReplayBuffer({"data": {}})
    with pytest.raises(ValueError, match="'data/x' has 4 steps but meta/episode_ends ends at 3"):
        ReplayBuffer({"data": {"x": np.zeros(4)}, "meta": {"episode_ends": np.array([3])}})


def test_zarr_recording_is_upstream_format(tmp_path):
    path = tmp_path / "demo.zarr"
    buffer = ReplayBuffer.create_from_path(path, mode="a")
    assert buffer.backend == "zarr" and buffer.n_episodes == 0
    buffer.add_episode(_episode(4, 0), compressors="disk")
    buffer.add_episode(_episode(2, 100), compressors="disk")
    # reopened later, it continues where it stopped, as upstream's demo script relies on
    again = ReplayBuffer.create_from_path(path, mode="a")
    assert again.n_episodes == 2
    again.add_episode(_episode(3, 200))
    zarray = json.loads((path / "data" / "action" / ".zarray").read_text())
    assert zarray["zarr_format"] == 2
    assert zarray["compressor"]["cname"] == "zstd" and zarray["compressor"]["shuffle"] == 2
    assert (path / "meta" / "episode_ends" / ".zarray").exists()

    loaded = ReplayBuffer.copy_from_path(path)
    np.testing.assert_array_equal(loaded.episode_ends, [4, 6, 9])
    np.testing.assert_array_equal(loaded["action"][:, 0], [0, 1, 2, 3, 100, 101, 200, 201, 202])
    np.testing.assert_array_equal(loaded.get_episode(2)["img"], _episode(3, 200)["img"])
    again.drop_episode()
    assert ReplayBuffer.create_from_path(path).n_steps == 6


def test_save_to_path_round_trip_and_replace(tmp_path):
    buffer = ReplayBuffer.create_empty_numpy()
    buffer.add_episode(_episode(3, 0))
    buffer.add_episode(_episode(4, 5))
    path = tmp_path / "out" / "saved.zarr"
    buffer.save_to_path(path, chunks={"action": (2, 2)}, compressors="disk")
    zarray = json.loads((path / "data" / "action" / ".zarray").read_text())
    assert zarray["chunks"] == [2, 2] and zarray["zarr_format"] == 2
    img_chunks = json.loads((path / "data" / "img" / ".zarray").read_text())["chunks"]
    assert img_chunks[1:] == [1, 4, 3]
    loaded = ReplayBuffer.copy_from_path(path)
    for key in ("action", "img"):
        np.testing.assert_array_equal(loaded[key], buffer[key])
        assert loaded[key].dtype == buffer[key].dtype
    np.testing.assert_array_equal(loaded.episode_ends, [3, 7])

    buffer.pop_episode()
    buffer.save_to_path(path, compressors={"img": numcodecs.Zstd(level=1)})
    assert ReplayBuffer.copy_from_path(path).n_steps == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["saved.zarr"]
