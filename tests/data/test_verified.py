"""Published datasets are checked against their digests once per copy, cached outside the data."""

import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from diffusion_policy_mlx.common.data_checks import DataError
from diffusion_policy_mlx.common.replay_buffer import ReplayBuffer
from diffusion_policy_mlx.data import verified
from diffusion_policy_mlx.data.download import array_sha256
from diffusion_policy_mlx.data.registry import DATASETS, ArrayDigest, RemoteDataset
from diffusion_policy_mlx.dataset.pusht_dataset import PushTLowdimDataset
from diffusion_policy_mlx.dataset.source import load_replay_buffer

PATH = "pusht/pusht_cchi_v7_replay.zarr"


def _tiny_pusht(root: Path) -> tuple[Path, RemoteDataset]:
    """A small store at the PushT path under ``root`` and a registry entry of its digests."""
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer.create_empty_numpy()
    for n in (5, 7):
        buffer.add_episode(
            {
                "keypoint": rng.normal(size=(n, 9, 2)).astype(np.float32),
                "state": rng.normal(size=(n, 5)).astype(np.float32),
                "action": rng.normal(size=(n, 2)).astype(np.float32),
            }
        )
    path = buffer.save_to_path(root / PATH, chunks={"action": (4, 2)})
    group = zarr.open_group(str(path), mode="r")
    arrays = {
        name: ArrayDigest(
            tuple(group[name].shape), str(group[name].dtype), array_sha256(group[name])
        )
        for name in ("data/keypoint", "data/state", "data/action", "meta/episode_ends")
    }
    return path, RemoteDataset(name="pusht", url="http://unused", path=PATH, arrays=arrays)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "diffusion_policy_mlx" / "verified"


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> tuple[Path, RemoteDataset]:
    path, spec = _tiny_pusht(tmp_path / "data")
    monkeypatch.setitem(DATASETS, "pusht", spec)
    return path, spec


def _files(path: Path) -> dict[str, float]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob("*")}


def test_verified_once_then_cached_outside_the_data(tiny, cache, monkeypatch):
    path, spec = tiny
    before = _files(path)
    assert verified.verify_once(path, spec) is True
    (record,) = cache.iterdir()
    assert str(path.resolve()) in record.read_text()
    calls = []
    monkeypatch.setattr(verified, "verify", lambda *a, **k: calls.append(a))
    assert verified.verify_once(path, spec) is False
    assert calls == []
    assert _files(path) == before  # nothing written into the data folder


def test_a_changed_file_or_registry_invalidates_the_record(tiny, cache):
    path, spec = tiny
    assert verified.verify_once(path, spec)
    chunk = path / "data" / "action" / "0.0"
    stat = chunk.stat()
    # same bytes, new mtime: checked again (and passes)
    time.sleep(0.01)
    chunk.write_bytes(chunk.read_bytes())
    assert chunk.stat().st_mtime_ns != stat.st_mtime_ns
    assert verified.verify_once(path, spec)
    assert not verified.verify_once(path, spec)
    other = RemoteDataset(spec.name, spec.url, spec.path, dict(spec.arrays))
    other.arrays["data/state"] = ArrayDigest((12, 5), "float32", "0" * 64)
    with pytest.raises(DataError, match="data/state has sha256 .* expected 0000"):
        verified.verify_once(path, other)


def test_a_damaged_cache_record_means_check_again(tiny, cache):
    path, spec = tiny
    verified.verify_once(path, spec)
    (record,) = cache.iterdir()
    record.write_text("{not json")
    assert verified.verify_once(path, spec)


def test_an_unwritable_cache_warns_and_loads(tiny, tmp_path, monkeypatch, caplog):
    path, spec = tiny
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert verified.verify_once(path, spec)
    assert "could not record the dataset check" in caplog.text


def test_a_modified_published_dataset_is_refused_with_the_remedy(tiny, cache):
    path, _ = tiny
    action = zarr.open_array(str(path / "data" / "action"), mode="r+")
    action[3, 0] = action[3, 0] + 1
    with pytest.raises(DataError, match="data/action has sha256") as error:
        PushTLowdimDataset(str(path), horizon=2)
    message = str(error.value)
    assert "download pusht --root" in message and "--force" in message
    assert "data of your own belongs at another path" in message
    assert not cache.exists() or not any(cache.iterdir())


def test_loaded_arrays_are_hashed_in_memory(tiny, cache, monkeypatch):
    path, _ = tiny
    seen = {}

    def spy(store, spec, progress, loaded, remedy):
        seen.update(loaded)

    monkeypatch.setattr(verified, "verify", spy)
    buffer = load_replay_buffer(path, keys=["state", "action"])
    assert sorted(seen) == ["data/action", "data/state", "meta/episode_ends"]
    assert seen["data/state"] is buffer["state"]


def test_other_paths_are_not_checked_against_the_registry(tmp_path, cache):
    path, _ = _tiny_pusht(tmp_path / "data")
    mine = path.rename(tmp_path / "mine.zarr")
    action = zarr.open_array(str(mine / "data" / "action"), mode="r+")
    action[3, 0] = 99.0
    assert load_replay_buffer(mine, keys=["action"])["action"][3, 0] == 99.0
    assert not cache.exists()


@pytest.mark.slow
def test_real_pusht_is_verified_then_cached(pusht_zarr, cache):
    start = time.perf_counter()
    load_replay_buffer(pusht_zarr, keys=["img", "state", "action"])
    first = time.perf_counter() - start
    start = time.perf_counter()
    load_replay_buffer(pusht_zarr, keys=["img", "state", "action"])
    again = time.perf_counter() - start
    assert len(list(cache.iterdir())) == 1
    print(f"first open {first:.1f} s, later opens {again:.1f} s")
