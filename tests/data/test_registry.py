"""Where datasets live and the error for one that is missing."""

from pathlib import Path

import pytest

from diffusion_policy_mlx.data.registry import DATASETS, dataset_for_path, require_dataset


def test_dataset_for_path():
    spec, root = dataset_for_path("data/pusht/pusht_cchi_v7_replay.zarr")
    assert spec is DATASETS["pusht"] and root == Path("data")
    assert dataset_for_path("/srv/x/pusht/pusht_cchi_v7_replay.zarr")[1] == Path("/srv/x")
    assert dataset_for_path("pusht/pusht_cchi_v7_replay.zarr")[1] == Path(".")
    assert dataset_for_path("data/other/thing.zarr") is None


def test_registry_records_the_published_digests(fixtures_dir):
    import json

    digest = json.loads((fixtures_dir / "normalizer_pusht.json").read_text())["zarr_digest"]
    recorded = DATASETS["pusht"].arrays
    assert sorted(recorded) == sorted(digest)
    for name, entry in digest.items():
        assert recorded[name].shape == tuple(entry["shape"])
        assert recorded[name].dtype == entry["dtype"]
        assert recorded[name].sha256 == entry["sha256"]


def test_require_dataset_messages(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here.zarr").mkdir()
    assert require_dataset("here.zarr") == Path("here.zarr")
    with pytest.raises(FileNotFoundError) as error:
        require_dataset(tmp_path / "mirror" / "pusht" / "pusht_cchi_v7_replay.zarr")
    assert f"download pusht --root {tmp_path / 'mirror'}`" in str(error.value)
    with pytest.raises(FileNotFoundError, match=r"'data/mine.zarr'.*download --help"):
        require_dataset("data/mine.zarr")
