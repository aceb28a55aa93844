"""Damaged or inconsistent zarr stores are refused when opened, each naming the array and row."""

import json
import shutil
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr

from diffusion_policy_mlx.common.data_checks import DataError, image_scale
from diffusion_policy_mlx.common.replay_buffer import ReplayBuffer


def _buffer(n_steps=(6, 5), seed=0) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer.create_empty_numpy()
    for n in n_steps:
        buffer.add_episode(
            {
                "action": rng.normal(size=(n, 2)).astype(np.float32),
                "img": rng.integers(0, 256, size=(n, 4, 4, 3)).astype(np.uint8),
            }
        )
    return buffer


@pytest.fixture
def store(tmp_path) -> Path:
    """11 steps in 2 episodes; action in chunks of 4 rows (3 chunk files: 0.0, 1.0, 2.0)."""
    path = tmp_path / "demo.zarr"
    _buffer().save_to_path(path, chunks={"action": (4, 2), "img": (4, 4, 4, 3)})
    return path


def _files(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def _refused(path: Path, match: str) -> str:
    before = _files(path)
    with pytest.raises(DataError, match=match) as error:
        ReplayBuffer.copy_from_path(path)
    assert _files(path) == before  # reading never writes
    return str(error.value)


def test_an_intact_store_loads(store):
    loaded = ReplayBuffer.copy_from_path(store)
    np.testing.assert_array_equal(loaded["action"], _buffer()["action"])
    np.testing.assert_array_equal(loaded.episode_ends, [6, 11])


def test_all_zero_chunks_are_written_and_read_back(tmp_path):
    # zarr 3 skips chunks equal to the fill value unless told otherwise; the reader would
    # then refuse them as missing
    buffer = ReplayBuffer.create_empty_numpy()
    buffer.add_episode({"x": np.zeros((8, 1), np.float32)})
    path = buffer.save_to_path(tmp_path / "zeros.zarr", chunks=(4, 1))
    assert sorted(p.name for p in (path / "data" / "x").iterdir()) == [
        ".zarray",
        ".zattrs",
        "0.0",
        "1.0",
    ]
    recorded = ReplayBuffer.create_from_path(tmp_path / "rec.zarr", mode="a")
    recorded.add_episode({"x": np.zeros((8, 1), np.float32)}, chunks=(4, 1))
    again = ReplayBuffer.create_from_path(tmp_path / "rec.zarr", mode="a")
    again.add_episode({"x": np.zeros((4, 1), np.float32)})
    assert ReplayBuffer.copy_from_path(tmp_path / "rec.zarr")["x"].shape == (12, 1)


def test_missing_chunk_is_named_not_read_as_zeros(store):
    (store / "data" / "action" / "1.0").unlink()
    message = _refused(store, r"chunk 1\.0 of data/action \(rows 4\.\.7\) is missing")
    assert str(store / "data" / "action" / "1.0") in message


def test_missing_episode_ends_chunk_is_named(store):
    (store / "meta" / "episode_ends" / "0").unlink()
    _refused(store, r"chunk 0 of meta/episode_ends .* is missing")


@pytest.mark.parametrize("cut", [20, 47, 8])
def test_truncated_chunk_is_named(store, cut):
    chunk = store / "data" / "action" / "2.0"
    chunk.write_bytes(chunk.read_bytes()[:cut])
    _refused(store, r"chunk 2\.0 of data/action .*2\.0\) is damaged")


def test_undecodable_chunk_is_named(tmp_path):
    # a compressed chunk whose frame is whole but whose payload is garbage
    path = tmp_path / "z.zarr"
    buffer = ReplayBuffer.create_empty_numpy()
    buffer.add_episode({"x": np.tile(np.arange(64, dtype=np.float32), (16, 1))})
    buffer.save_to_path(path, chunks=(8, 64), compressors=numcodecs.Zstd(level=1))
    chunk = path / "data" / "x" / "1.0"
    data = bytearray(chunk.read_bytes())
    data[4:] = bytes(len(data) - 4)
    chunk.write_bytes(bytes(data))
    _refused(path, r"data/x cannot be decoded in chunk 1\.0 \(.*1\.0\)")


@pytest.mark.parametrize(
    "damage",
    ['{"chunks": [4, ', "[1, 2]", "\xff\xfe", '{"zarr_format": 2, "shape": [11, 2]}'],
)
def test_damaged_array_metadata_is_named(store, damage):
    (store / "data" / "action" / ".zarray").write_text(damage, errors="surrogateescape")
    message = _refused(store, r"data/action")
    assert ".zarray" in message


def test_damaged_group_metadata_is_named(store):
    (store / "data" / ".zgroup").write_text("{")
    _refused(store, r"metadata of data .*data/\.zgroup\) is damaged")
    (store / ".zgroup").write_text("{")
    _refused(store, r"root metadata .* is damaged")


def test_damaged_zarr_v3_metadata_is_named(tmp_path):
    path = tmp_path / "v3.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("data/x", data=np.ones((4, 2), np.float32), chunks=(2, 2))
    group.create_array("meta/episode_ends", data=np.array([4]), chunks=(1,))
    assert ReplayBuffer.copy_from_path(path)["x"].shape == (4, 2)
    chunk = path / "data" / "x" / "c" / "1" / "0"
    saved = chunk.read_bytes()
    chunk.unlink()
    _refused(path, r"chunk 1\.0 of data/x \(rows 2\.\.3\) is missing: .*c/1/0 does not exist")
    chunk.write_bytes(saved)
    (path / "data" / "x" / "zarr.json").write_text("{")
    message = _refused(path, r"metadata of data/x")
    assert "zarr.json" in message
    (path / "data" / "x" / "zarr.json").unlink()
    shutil.rmtree(path / "data" / "x" / "c" / "1")
    _refused(path, r"metadata of data/x .*zarr.json\) is missing")


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_values_name_array_row_and_episode(store, bad):
    action = zarr.open_array(str(store / "data" / "action"), mode="r+")
    action[8, 1] = bad
    _refused(store, rf"data/action holds {bad} at row 8 \(episode 1, step 2\)")


def test_first_bad_row_is_found_past_a_scan_block(tmp_path, monkeypatch):
    from diffusion_policy_mlx.common import data_checks

    monkeypatch.setattr(data_checks, "SCAN_BLOCK_BYTES", 16)
    buffer = ReplayBuffer.create_empty_numpy()
    x = np.zeros((10, 2), np.float32)
    x[[7, 9], 0] = np.nan
    buffer.add_episode({"x": x})
    path = buffer.save_to_path(tmp_path / "nan.zarr")
    _refused(path, r"data/x holds nan at row 7 \(episode 0, step 7\)")


def _set_episode_ends(path: Path, ends: list[int]) -> None:
    zarr.open_group(str(path), mode="r+")["meta"].create_array(
        "episode_ends", data=np.array(ends, np.int64), chunks=(len(ends),), overwrite=True
    )


@pytest.mark.parametrize(
    ("ends", "match"),
    [
        ([7, 4, 11], r"episode_ends\[1\]=4 follows episode_ends\[0\]=7 \(episode 1 would hold -3"),
        ([6, 6, 11], r"episode_ends\[1\]=6 follows episode_ends\[0\]=6"),
        ([0, 11], r"episode_ends\[0\]=0 follows 0"),
        ([6, 12], r"'data/action' has 11 steps but meta/episode_ends ends at 12"),
        ([6, 10], r"'data/action' has 11 steps but meta/episode_ends ends at 10"),
    ],
)
def test_bad_episode_ends_are_refused(store, ends, match):
    _set_episode_ends(store, ends)
    _refused(store, match)


def test_episode_ends_must_be_integers():
    with pytest.raises(DataError, match="1-D integer array"):
        ReplayBuffer({"data": {}, "meta": {"episode_ends": np.array([1.5])}})
    with pytest.raises(DataError, match="is empty but data/x holds 2 rows"):
        ReplayBuffer({"data": {"x": np.zeros(2)}, "meta": {"episode_ends": np.zeros(0, int)}})


@pytest.mark.parametrize(
    ("images", "scale"),
    [
        (np.array([0, 255], np.uint8), 255.0),
        (np.array([0.0, 0.5, 1.0], np.float32), 1.0),
        (np.array([0.0, 65.0, 255.0], np.float32), 255.0),
        (np.zeros(0, np.float32), 255.0),
    ],
)
def test_image_scale_rule(images, scale):
    assert image_scale(images, "img", "'x'") == scale


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (np.array([0, 300], np.int32), "dtype int32; images must be uint8"),
        (np.array([-0.5, 0.5], np.float32), r"values from -0\.5 to 0\.5"),
        (np.array([0.0, 256.0], np.float32), r"values from 0\.0 to 256\.0"),
    ],
)
def test_image_scale_refuses_other_images(images, match):
    with pytest.raises(DataError, match=match):
        image_scale(images, "img", "'x'")


def test_metadata_error_leaves_other_stores_readable(store, tmp_path):
    other = tmp_path / "other.zarr"
    shutil.copytree(store, other)
    meta = json.loads((store / "data" / "img" / ".zarray").read_text())
    meta["dtype"] = "<q9"
    (store / "data" / "img" / ".zarray").write_text(json.dumps(meta))
    _refused(store, r"metadata of data/img")
    assert ReplayBuffer.copy_from_path(store, keys=["action"]).n_steps == 11
    assert ReplayBuffer.copy_from_path(other).n_steps == 11


def test_a_group_where_an_array_belongs_is_named(store):
    (store / "data" / "action" / ".zarray").unlink()
    (store / "data" / "action" / ".zgroup").write_text('{"zarr_format": 2}')
    _refused(store, r"data/action is not a zarr array; its metadata .*\.zarray\) is missing")
