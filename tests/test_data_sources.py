"""The PushT data the tests use: data/pusht/ once verified, else the shared copy, else a skip
that says how to get it."""

from pathlib import Path

import data_sources
import numpy as np
import pytest
import zarr
from data_sources import PUSHT, find_pusht


class DictCache(dict):
    """``pytest.Cache``'s get/set over a dict."""

    def get(self, key, default):
        return super().get(key, default)

    def set(self, key, value):
        self[key] = value


def fake_zarr(root: Path, action_rows: int = 3) -> Path:
    """A zarr at ``root``'s data path with the right array names and wrong contents."""
    path = root / "data" / PUSHT.path
    group = zarr.open_group(str(path), mode="w")
    group["data/action"] = np.zeros((action_rows, 2), np.float32)
    group["meta/episode_ends"] = np.array([action_rows])
    return path


@pytest.fixture
def verify_calls(monkeypatch) -> list[Path]:
    """Replaces the digest check by one that passes and records what it checked."""
    calls: list[Path] = []
    monkeypatch.setattr(data_sources, "verify", lambda path, spec, progress: calls.append(path))
    return calls


def test_verified_local_copy_wins_and_the_pass_is_remembered(tmp_path, verify_calls):
    local = fake_zarr(tmp_path / "repo")
    fake_zarr(tmp_path / "shared")
    cache = DictCache()
    assert find_pusht(tmp_path / "repo", tmp_path / "shared", cache) == local
    assert find_pusht(tmp_path / "repo", tmp_path / "shared", cache) == local
    assert verify_calls == [local]
    # a changed file is checked again
    zarr.open_group(str(local), mode="a")["data/action"][0] = 1.0
    assert find_pusht(tmp_path / "repo", tmp_path / "shared", cache) == local
    assert verify_calls == [local, local]


def test_without_a_cache_every_session_verifies(tmp_path, verify_calls):
    local = fake_zarr(tmp_path / "repo")
    assert find_pusht(tmp_path / "repo", tmp_path / "shared", None) == local
    assert find_pusht(tmp_path / "repo", tmp_path / "shared", None) == local
    assert verify_calls == [local, local]


def test_local_copy_that_fails_verification_gives_way_to_the_shared_one(tmp_path):
    fake_zarr(tmp_path / "repo")
    shared = fake_zarr(tmp_path / "shared")
    cache = DictCache()
    assert find_pusht(tmp_path / "repo", tmp_path / "shared", cache) == shared
    assert cache == {}


def test_without_any_copy_the_message_says_how_to_get_it(tmp_path):
    with pytest.raises(LookupError) as missing:
        find_pusht(tmp_path / "repo", tmp_path / "shared", DictCache())
    message = str(missing.value)
    assert (
        "(absent)" in message and "`python -m diffusion_policy_mlx.data download pusht`" in message
    )
    assert str(tmp_path / "repo" / "data" / PUSHT.path) in message


def test_a_bad_local_copy_is_named_with_its_problem_and_the_fix(tmp_path):
    fake_zarr(tmp_path / "repo", action_rows=5)
    with pytest.raises(LookupError) as bad:
        find_pusht(tmp_path / "repo", tmp_path / "shared", DictCache())
    message = str(bad.value)
    assert "data/action is (5, 2) float32, expected (25650, 2) float32" in message
    assert "download pusht --force`" in message
