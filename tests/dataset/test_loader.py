"""DataLoader: upstream's config keys, deterministic shuffles, resumable epochs, background threads."""

import os
import threading

import mlx.core as mx
import numpy as np
import pytest

from diffusion_policy_mlx.dataset.loader import DataLoader
from diffusion_policy_mlx.dataset.pusht_dataset import PushTLowdimDataset


@pytest.fixture(scope="module")
def dataset(pusht_zarr):
    return PushTLowdimDataset(
        str(pusht_zarr),
        horizon=16,
        pad_before=1,
        pad_after=7,
        seed=42,
        val_ratio=0.02,
        max_train_episodes=90,
    )


class Numbered:
    """A plain (non-package) dataset: sample i is {'x': [i, i], 'nested': {'y': i}}."""

    def __init__(self, n, fail_at=None):
        self.n, self.fail_at = n, fail_at
        self.threads = set()

    def __len__(self):
        return self.n

    def __getitem__(self, idx):
        self.threads.add(threading.current_thread().name)
        if idx == self.fail_at:
            raise RuntimeError(f"sample {idx} is broken")
        return {"x": np.array([idx, idx], np.int32), "nested": {"y": np.float32(idx)}}


def _order(loader):
    return np.concatenate([np.array(batch["x"][:, 0]) for batch in loader])


def test_accepts_upstream_config_and_yields_mx_batches(dataset):
    cfg = dict(
        batch_size=256, num_workers=1, shuffle=True, pin_memory=True, persistent_workers=False
    )
    loader = DataLoader(dataset, seed=0, **cfg)
    assert len(loader) == -(-10726 // 256) == 42
    batch = next(iter(loader))
    assert isinstance(batch["obs"], mx.array) and batch["obs"].shape == (256, 16, 20)
    assert batch["obs"].dtype == mx.float32 and batch["action"].shape == (256, 16, 2)
    first = loader.batch_indices(0)[0]
    expected = dataset.__getitems__(first)
    np.testing.assert_array_equal(np.array(batch["obs"]), expected["obs"])
    np.testing.assert_array_equal(np.array(batch["action"]), expected["action"])


def test_every_sample_once_per_epoch_and_drop_last():
    loader = DataLoader(Numbered(10), batch_size=4, shuffle=True, seed=3)
    sizes = [len(b["x"]) for b in loader]
    assert sizes == [4, 4, 2]
    assert sorted(_order(loader)) == list(range(10))
    dropping = DataLoader(Numbered(10), batch_size=4, shuffle=True, seed=3, drop_last=True)
    assert len(dropping) == 2 and [len(b["x"]) for b in dropping] == [4, 4]
    np.testing.assert_array_equal(
        np.array(next(iter(DataLoader(Numbered(5), 5)))["nested"]["y"]), np.arange(5)
    )


def test_shuffle_is_deterministic_and_resumable():
    a = DataLoader(Numbered(50), batch_size=8, shuffle=True, seed=7)
    epochs = [_order(a) for _ in range(3)]
    assert not np.array_equal(epochs[0], epochs[1])
    np.testing.assert_array_equal(epochs[0], np.random.default_rng([7, 0]).permutation(50))
    resumed = DataLoader(Numbered(50), batch_size=8, shuffle=True, seed=7)
    resumed.set_epoch(2)
    np.testing.assert_array_equal(_order(resumed), epochs[2])
    assert resumed.epoch == 3
    other = DataLoader(Numbered(50), batch_size=8, shuffle=True, seed=8)
    assert not np.array_equal(_order(other), epochs[0])
    np.testing.assert_array_equal(_order(DataLoader(Numbered(50), batch_size=8)), np.arange(50))


def test_seed_none_follows_numpy_global_seed():
    np.random.seed(123)
    a = _order(DataLoader(Numbered(30), batch_size=4, shuffle=True))
    np.random.seed(123)
    b = _order(DataLoader(Numbered(30), batch_size=4, shuffle=True))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("num_workers", [1, 3])
def test_workers_give_the_same_batches_in_order(dataset, num_workers):
    serial = DataLoader(dataset, batch_size=64, shuffle=True, seed=1)
    threaded = DataLoader(dataset, batch_size=64, shuffle=True, seed=1, num_workers=num_workers)
    for i, (a, b) in enumerate(zip(serial, threaded, strict=True)):
        np.testing.assert_array_equal(np.array(a["obs"]), np.array(b["obs"]))
        if i == 10:
            break


def test_work_happens_in_background_threads():
    data = Numbered(20)
    list(DataLoader(data, batch_size=4, num_workers=2))
    assert data.threads and all(name.startswith("DataLoader") for name in data.threads)
    data = Numbered(20)
    list(DataLoader(data, batch_size=4, num_workers=0))
    assert data.threads == {threading.current_thread().name}


def test_threads_are_capped_at_the_usable_cores():
    cores = len(os.sched_getaffinity(0))
    assert DataLoader(Numbered(4), num_workers=10_000).n_threads == cores
    assert DataLoader(Numbered(4), num_workers=1).n_threads == 1
    data = Numbered(400)
    list(DataLoader(data, batch_size=2, num_workers=10_000))
    assert 1 <= len(data.threads) <= cores


def test_worker_error_reaches_the_caller_and_early_stop_is_clean():
    with pytest.raises(RuntimeError, match="sample 13 is broken"):
        list(DataLoader(Numbered(20, fail_at=13), batch_size=4, num_workers=2))
    before = threading.active_count()
    loader = DataLoader(Numbered(1000), batch_size=2, num_workers=2, prefetch_factor=4)
    for i, _ in enumerate(loader):
        if i == 3:
            break
    assert threading.active_count() == before


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(Numbered(3), batch_size=0)
    with pytest.raises(ValueError, match="num_workers"):
        DataLoader(Numbered(3), num_workers=-1)
