"""Splitting batched work over CPU streams: chunk bounds, per-sample draws, generator, BLAS."""

from diffusion_policy_mlx.accel import blas, cpu_streams
from diffusion_policy_mlx.accel.cpu_streams import CpuStreams

import mlx.core as mx
import numpy as np
import pytest

from diffusion_policy_mlx.common.batch_split import BatchSplit
from diffusion_policy_mlx.common.distributed import Shard, current_shard, sharded_draw

# accel's CPU machinery against MLX on the CPU, also where a GPU is the default device
pytestmark = pytest.mark.usefixtures("cpu_device")


def test_batch_chunks_cover_the_rows_once():
    split = CpuStreams(3)
    chunks = split.chunks(8)
    assert [(c.start, c.stop) for c in chunks] == [(0, 3), (3, 6), (6, 8)]
    assert len({c.stream for c in chunks}) == 3
    assert all(c.stream.device == mx.cpu for c in chunks)
    # never more chunks than rows
    assert [(c.start, c.stop) for c in split.chunks(2)] == [(0, 1), (1, 2)]
    split = CpuStreams(1)
    assert split.chunks(8) == []


def test_nothing_is_split_off_the_cpu():
    split = CpuStreams(2)
    if not mx.is_available(mx.gpu):
        pytest.skip("needs a GPU to be the default device")
    with mx.stream(mx.default_stream(mx.gpu)):
        assert split.chunks(8) == []


def test_stream_count_from_the_setting_or_the_environment(monkeypatch):
    assert cpu_streams.stream_count(3, on_cpu=True, environ={}) == 3
    # the environment variable overrides the config's setting
    assert cpu_streams.stream_count(1, on_cpu=True, environ={cpu_streams.ENV_VAR: "3"}) == 3
    with pytest.raises(ValueError, match="DP_MLX_CPU_STREAMS='two'"):
        cpu_streams.stream_count(None, on_cpu=True, environ={cpu_streams.ENV_VAR: "two"})
    with pytest.raises(ValueError, match="accel.cpu_streams must be >= 1"):
        cpu_streams.stream_count(0, on_cpu=True, environ={})
    # the default: one per core, at most two, on the CPU; one elsewhere
    monkeypatch.setattr(cpu_streams, "available_cores", lambda: 8)
    assert cpu_streams.stream_count(None, on_cpu=True, environ={}) == 2
    assert cpu_streams.stream_count(None, on_cpu=False, environ={}) == 1
    monkeypatch.setattr(cpu_streams, "available_cores", lambda: 1)
    assert cpu_streams.stream_count(None, on_cpu=True, environ={}) == 1
    with pytest.raises(ValueError, match="count must be >= 1"):
        CpuStreams(0)


def test_map_chunks_weights_make_the_batch_mean():
    split = CpuStreams(3)
    x = mx.arange(7, dtype=mx.float32) ** 2
    parts = split.map_chunks(lambda b: mx.mean(b["x"]), {"x": x})
    assert [w for w, _ in parts] == pytest.approx([3 / 7, 2 / 7, 2 / 7])
    total = sum(w * v.item() for w, v in parts)
    assert total == pytest.approx(91 / 7)  # mean of 0, 1, 4, ..., 36
    split = CpuStreams(1)
    assert split.map_chunks(lambda b: b, {"x": x}) is None


def test_chunked_mean_is_the_batch_mean_of_every_leaf():
    x = mx.arange(7, dtype=mx.float32) ** 2

    def means(batch):
        return {"mean": mx.mean(batch), "pair": (mx.mean(2 * batch), mx.mean(batch + 1))}

    for n in (3, 1):
        split = CpuStreams(n)
        got = split.chunked_mean(means, x)
        assert got["mean"].item() == pytest.approx(91 / 7)
        assert [v.item() for v in got["pair"]] == pytest.approx([182 / 7, 98 / 7])
    # unsplit, fn sees the shard it was given
    seen = split.chunked_mean(lambda b: current_shard(), x, Shard(2, 7, 9))
    assert seen == Shard(2, 7, 9)


def test_chunks_keep_their_rows_of_the_whole_batch_draw():
    """Per-sample draws made in chunks are the rows of the one draw for the whole batch."""
    split = CpuStreams(2)
    key = mx.random.key(5)

    def draw(batch):
        return sharded_draw(lambda shape: mx.random.normal(shape, key=key), (batch.shape[0], 3))

    whole = np.array(mx.random.normal((5, 3), key=key))
    parts = split.map_chunks(draw, mx.zeros((5, 1)))
    np.testing.assert_array_equal(np.concatenate([np.array(p) for _, p in parts]), whole)
    # inside a data-parallel shard the chunks keep rows of the global batch's draw
    global_draw = np.array(mx.random.normal((10, 3), key=key))
    parts = split.map_chunks(draw, mx.zeros((5, 1)), shard=Shard(4, 5, 10))
    np.testing.assert_array_equal(np.concatenate([np.array(p) for _, p in parts]), global_draw[4:9])


def test_chunks_are_not_split_again():
    split = CpuStreams(2)
    inner = split.map_chunks(lambda b: split.chunks(b.shape[0]), mx.zeros(6))
    assert [chunks for _, chunks in inner] == [[], []]


def test_every_chunk_draws_from_the_calls_generator_state():
    """Global draws in chunks are the unsplit batch's: the generator restarts per chunk."""
    split = CpuStreams(2)
    mx.random.seed(3)
    whole = np.array(mx.random.normal((4, 2)))
    after_whole = np.array(mx.random.state[0])
    mx.random.seed(3)

    def draw(batch):
        return sharded_draw(lambda shape: mx.random.normal(shape), (batch.shape[0], 2))

    parts = split.map_chunks(draw, mx.zeros(4))
    np.testing.assert_array_equal(np.concatenate([np.array(p) for _, p in parts]), whole)
    np.testing.assert_array_equal(np.array(mx.random.state[0]), after_whole)


def test_blas_threads_follow_the_split(monkeypatch):
    if blas.num_threads() is None:
        pytest.skip("no BLAS with a settable thread count is loaded")
    before = blas.num_threads()
    monkeypatch.setattr(cpu_streams, "available_cores", lambda: 4)
    try:
        split = CpuStreams(2)
        split.use_blas_threads(64)
        assert blas.num_threads() == 2  # 4 cores over 2 streams
        split.use_blas_threads(1)
        assert blas.num_threads() == 4  # one row: nothing split, every core
        split = CpuStreams(1)
        split.use_blas_threads(64)
        assert blas.num_threads() == 4
    finally:
        blas.set_num_threads(before)


def test_bfs_width_default_only_where_unset():
    env = {}
    assert cpu_streams.apply_cpu_defaults(env) == {"MLX_BFS_MAX_WIDTH": "1000"}
    assert env == {"MLX_BFS_MAX_WIDTH": "1000"}
    env = {"MLX_BFS_MAX_WIDTH": "50"}
    assert cpu_streams.apply_cpu_defaults(env) == {}
    assert env == {"MLX_BFS_MAX_WIDTH": "50"}


def test_the_whole_batch_layout_splits_nothing():
    whole = BatchSplit()
    x = mx.arange(4, dtype=mx.float32)
    assert whole.map_chunks(lambda b: b, x) is None
    assert whole.chunked_mean(mx.mean, x).item() == 1.5
    assert whole.spread().streams == []


def test_parameter_spread_balances_elements_over_the_streams():
    split = CpuStreams(2)
    spread = split.spread()
    used = []
    for size in [100, 10, 10, 50, 30]:
        with spread.on(mx.zeros((size,))):
            used.append(mx.default_stream(mx.cpu))
    first, second = spread.streams
    # greedy by elements so far: 100 | 10, 10, 50 | then 30 on the lighter (70)
    assert used == [first, second, second, second, second]
    assert spread.loads == [100, 100]


def test_parameter_spread_changes_nothing_with_one_stream():
    split = CpuStreams(1)
    spread = split.spread()
    default = mx.default_stream(mx.cpu)
    with spread.on(mx.zeros((4,))):
        assert mx.default_stream(mx.cpu) == default
    assert spread.streams == []


def test_optimizer_updates_on_streams_equal_the_plain_update():
    from mlx.optimizers import AdamW

    split = CpuStreams(2)
    rng = np.random.default_rng(0)
    params = {
        f"w{i}": mx.array(rng.standard_normal((5, i + 1)).astype(np.float32)) for i in range(4)
    }
    grads = {k: v * 0.3 + 0.1 for k, v in params.items()}
    plain, spread_opt = (
        AdamW(learning_rate=0.01, weight_decay=0.1),
        AdamW(learning_rate=0.01, weight_decay=0.1),
    )
    want = plain.apply_gradients(grads, params)
    spread = split.spread()
    with spread.optimizer_updates(spread_opt):
        got = spread_opt.apply_gradients(grads, params)
    # the wrapper is gone afterwards, and the work went to both streams
    assert "apply_single" not in vars(spread_opt)
    assert all(load > 0 for load in spread.loads)
    for k in params:
        np.testing.assert_array_equal(np.array(got[k]), np.array(want[k]))
    assert spread_opt.state["step"].item() == plain.state["step"].item() == 1
