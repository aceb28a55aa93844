"""Sequence sampling: index tables, splits and padding equal to upstream's."""

import numpy as np
import pytest
from safetensors.numpy import load_file

from diffusion_policy_mlx.common.replay_buffer import ReplayBuffer
from diffusion_policy_mlx.common.sampler import (
    SequenceSampler,
    create_indices,
    downsample_mask,
    get_val_mask,
)


def _loop_indices(episode_ends, sequence_length, episode_mask, pad_before, pad_after):
    """The index table written as the plain per-window loop upstream describes."""
    pad_before = min(max(pad_before, 0), sequence_length - 1)
    pad_after = min(max(pad_after, 0), sequence_length - 1)
    rows = []
    start = 0
    for end, keep in zip(episode_ends, episode_mask, strict=True):
        length = end - start
        for idx in range(-pad_before, length - sequence_length + pad_after + 1):
            if keep:
                b0 = max(idx, 0) + start
                b1 = min(idx + sequence_length, length) + start
                rows.append(
                    [
                        b0,
                        b1,
                        b0 - (idx + start),
                        sequence_length - (idx + sequence_length + start - b1),
                    ]
                )
        start = end
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
    return load_file(fixtures_dir / "normalizer_pusht.safetensors")


def _buffer(lengths):
    """Episodes whose ``x`` value at each step is ``100 * episode + step``."""
    buffer = ReplayBuffer.create_empty_numpy()
    for e, n in enumerate(lengths):
        x = (100 * e + np.arange(n, dtype=np.float32))[:, None]
        buffer.add_episode({"x": x, "y": np.concatenate([x, -x], axis=1)})
    return buffer


def test_create_indices_by_hand():
    # episode 0 has steps 0..2, episode 1 steps 3..6; windows of 4, one step padded before and 2 after
    table = create_indices(np.array([3, 7]), 4, np.array([True, True]), pad_before=1, pad_after=2)
    expected = [
        [0, 3, 1, 4],  # starts at -1: pad, steps 0 1 2
        [0, 3, 0, 3],  # starts at 0: steps 0 1 2, pad
        [1, 3, 0, 2],  # starts at 1: steps 1 2, pad pad
        [3, 6, 1, 4],
        [3, 7, 0, 4],
        [4, 7, 0, 3],
        [5, 7, 0, 2],
    ]
    np.testing.assert_array_equal(table, expected)
    only_second = create_indices(np.array([3, 7]), 4, np.array([False, True]), 1, 2)
    np.testing.assert_array_equal(only_second, expected[3:])
    assert create_indices(np.array([3, 7]), 4, np.array([False, False])).shape == (0, 4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_create_indices_matches_the_loop(seed):
    rng = np.random.default_rng(seed)
    ends = np.cumsum(rng.integers(1, 30, size=25))
    mask = rng.random(25) < 0.7
    for horizon in (1, 2, 7, 16):
        for pad_before, pad_after in [(0, 0), (1, 7), (3, 30), (-2, 2)]:
            np.testing.assert_array_equal(
                create_indices(ends, horizon, mask, pad_before, pad_after),
                _loop_indices(ends, horizon, mask, pad_before, pad_after),
            )


def test_splits_match_upstream(fixture):
    val_mask = get_val_mask(206, val_ratio=0.02, seed=42)
    np.testing.assert_array_equal(np.nonzero(val_mask)[0], fixture["output.val_mask_episode_idx"])
    train_mask = downsample_mask(~val_mask, max_n=90, seed=42)
    np.testing.assert_array_equal(np.nonzero(train_mask)[0], fixture["output.train_episode_idx"])
    np.testing.assert_array_equal(
        np.nonzero(~train_mask)[0], fixture["output.val_dataset_episode_idx"]
    )


def test_mask_edge_cases():
    assert not get_val_mask(10, 0.0).any()
    assert get_val_mask(10, 0.01).sum() == 1  # at least one validation episode
    assert get_val_mask(3, 0.99).sum() == 2  # at least one training episode
    mask = np.array([True, False, True, True])
    assert downsample_mask(mask, None) is mask
    assert downsample_mask(mask, 3) is mask
    assert downsample_mask(mask, 2, seed=3).sum() == 2
    assert not (downsample_mask(mask, 2, seed=3) & ~mask).any()


def test_sampler_tables_match_upstream(pusht_zarr, fixture):
    buffer = ReplayBuffer.copy_from_path(pusht_zarr, keys=["action"])
    train_mask = np.zeros(206, dtype=bool)
    train_mask[fixture["output.train_episode_idx"]] = True
    train = SequenceSampler(buffer, 16, pad_before=1, pad_after=7, episode_mask=train_mask)
    val = SequenceSampler(buffer, 16, pad_before=1, pad_after=7, episode_mask=~train_mask)
    assert len(train) == 10726 and len(val) == 13482
    np.testing.assert_array_equal(train.indices, fixture["output.train_sampler_indices"])
    np.testing.assert_array_equal(val.indices, fixture["output.val_sampler_indices"])
    np.testing.assert_array_equal(
        train.sample_sequence(5000)["action"], fixture["output.train_sample_5000.action"]
    )


def test_padding_repeats_edge_frames():
    sampler = SequenceSampler(_buffer([3, 4]), 4, pad_before=1, pad_after=2)
    np.testing.assert_array_equal(sampler.sample_sequence(0)["x"][:, 0], [0, 0, 1, 2])
    np.testing.assert_array_equal(sampler.sample_sequence(2)["x"][:, 0], [1, 2, 2, 2])
    np.testing.assert_array_equal(sampler.sample_sequence(4)["x"][:, 0], [100, 101, 102, 103])
    np.testing.assert_array_equal(sampler.sample_sequence(-1)["y"][:, 1], [-102, -103, -103, -103])
    short = SequenceSampler(_buffer([2]), 5, pad_before=4, pad_after=4)
    np.testing.assert_array_equal(short.sample_sequence(0)["x"][:, 0], [0, 0, 0, 0, 0])
    np.testing.assert_array_equal(short.sample_sequence(1)["x"][:, 0], [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(short.sample_sequence(4)["x"][:, 0], [0, 1, 1, 1, 1])
    assert len(short) == 6  # window starts -4..1


def test_batched_sampling_equals_single_samples():
    sampler = SequenceSampler(_buffer([5, 1, 9, 3]), 6, pad_before=2, pad_after=5, keys=["y"])
    idxs = np.arange(len(sampler))[::-1]
    batch = sampler.sample_sequences(idxs)
    assert list(batch) == ["y"] and batch["y"].shape == (len(sampler), 6, 2)
    for row, i in enumerate(idxs):
        np.testing.assert_array_equal(batch["y"][row], sampler.sample_sequence(i)["y"])
    with pytest.raises(IndexError):
        sampler.sample_sequence(len(sampler))


def test_key_first_k_reads_only_the_first_steps():
    buffer = _buffer([6])
    sampler = SequenceSampler(buffer, 4, pad_before=1, pad_after=1, key_first_k={"x": 2})
    first = sampler.sample_sequence(0)
    # window starting at -1: pad, 0, 1, 2 -> only data steps 0 and 1 are read
    np.testing.assert_array_equal(first["x"][:3, 0], [0, 0, 1])
    assert np.isnan(first["x"][3, 0])
    np.testing.assert_array_equal(first["y"][:, 0], [0, 0, 1, 2])
    last = sampler.sample_sequence(len(sampler) - 1)  # starts at 3: steps 3, 4, 5, pad
    np.testing.assert_array_equal(last["x"][:2, 0], [3, 4])
    assert np.isnan(last["x"][2:, 0]).all()


def test_key_first_steps_returns_the_first_output_steps():
    buffer = _buffer([6])
    sampler = SequenceSampler(buffer, 4, pad_before=1, pad_after=1, key_first_steps={"x": 2})
    # window starting at -1: pad (repeats step 0), 0, 1, 2 -> x keeps the first two steps only
    np.testing.assert_array_equal(sampler.sample_sequence(0)["x"][:, 0], [0, 0])
    np.testing.assert_array_equal(sampler.sample_sequence(0)["y"][:, 0], [0, 0, 1, 2])
    full = SequenceSampler(buffer, 4, pad_before=1, pad_after=1)
    idxs = np.arange(len(sampler))
    np.testing.assert_array_equal(
        sampler.sample_sequences(idxs)["x"], full.sample_sequences(idxs)["x"][:, :2]
    )
    with pytest.raises(ValueError, match=r"key_first_steps\['x'\]=5"):
        SequenceSampler(buffer, 4, key_first_steps={"x": 5})


def test_zarr_backend_samples_like_numpy(tmp_path):
    buffer = _buffer([4, 7, 2])
    buffer.save_to_path(tmp_path / "b.zarr")
    on_disk = ReplayBuffer.create_from_path(tmp_path / "b.zarr")
    kwargs = dict(sequence_length=5, pad_before=2, pad_after=3, key_first_k={"y": 2})
    a = SequenceSampler(buffer, **kwargs).sample_sequences(np.arange(12))
    b = SequenceSampler(on_disk, **kwargs).sample_sequences(np.arange(12))
    for key in ("x", "y"):
        np.testing.assert_array_equal(a[key], b[key])
