"""Splitting batched work over CPU streams: chunk bounds, per-sample draws, generator, BLAS."""

import mlx.core as mx
import numpy as np
import pytest

from diffusion_policy_mlx.accel import blas, cpu_streams
from diffusion_policy_mlx.common.distributed import Shard, current_shard, sharded_draw


@pytest.fixture
def streams():
    """Set the stream count for one test, then go back to the default."""
    yield cpu_streams.set_cpu_streams
    cpu_streams.set_cpu_streams(None)


def test_batch_chunks_cover_the_rows_once(streams):
    streams(3)
    chunks = cpu_streams.batch_chunks(8)
    assert [(c.start, c.stop) for c in chunks] == [(0, 3), (3, 6), (6, 8)]
    assert len({c.stream for c in chunks}) == 3
    assert all(c.stream.device == mx.cpu for c in chunks)
    # never more chunks than rows
    assert [(c.start, c.stop) for c in cpu_streams.batch_chunks(2)] == [(0, 1), (1, 2)]
    streams(1)
    assert cpu_streams.batch_chunks(8) == []


def test_nothing_is_split_off_the_cpu(streams):
    streams(2)
    if not mx.is_available(mx.gpu):
        pytest.skip("needs a GPU to be the default device")
    with mx.stream(mx.default_stream(mx.gpu)):
        assert cpu_streams.batch_chunks(8) == []


def test_stream_count_from_the_environment(streams, monkeypatch):
    monkeypatch.setenv(cpu_streams.ENV_VAR, "3")
    assert cpu_streams.cpu_streams() == 3
    streams(1)  # a workspace's training.cpu_streams wins
    assert cpu_streams.cpu_streams() == 1
    streams(None)
    monkeypatch.setenv(cpu_streams.ENV_VAR, "two")
    with pytest.raises(ValueError, match="DP_MLX_CPU_STREAMS='two'"):
        cpu_streams.cpu_streams()
    monkeypatch.delenv(cpu_streams.ENV_VAR)
    # the default: one per core, at most two, on machines without a GPU
    monkeypatch.setattr(cpu_streams, "available_cores", lambda: 8)
    assert cpu_streams.cpu_streams() == (1 if mx.is_available(mx.gpu) else 2)
    monkeypatch.setattr(cpu_streams, "available_cores", lambda: 1)
    assert cpu_streams.cpu_streams() == 1
    with pytest.raises(ValueError, match="training.cpu_streams must be >= 1"):
        streams(0)


def test_map_chunks_weights_make_the_batch_mean(streams):
    streams(3)
    x = mx.arange(7, dtype=mx.float32) ** 2
    parts = cpu_streams.map_chunks(lambda b: mx.mean(b["x"]), {"x": x})
    assert [w for w, _ in parts] == pytest.approx([3 / 7, 2 / 7, 2 / 7])
    total = sum(w * v.item() for w, v in parts)
    assert total == pytest.approx(91 / 7)  # mean of 0, 1, 4, ..., 36
    streams(1)
    assert cpu_streams.map_chunks(lambda b: b, {"x": x}) is None


def test_chunked_mean_is_the_batch_mean_of_every_leaf(streams):
    x = mx.arange(7, dtype=mx.float32) ** 2

    def means(batch):
        return {"mean": mx.mean(batch), "pair": (mx.mean(2 * batch), mx.mean(batch + 1))}

    for n in (3, 1):
        streams(n)
        got = cpu_streams.chunked_mean(means, x)
        assert got["mean"].item() == pytest.approx(91 / 7)
        assert [v.item() for v in got["pair"]] == pytest.approx([182 / 7, 98 / 7])
    # unsplit, fn sees the shard it was given
    seen = cpu_streams.chunked_mean(lambda b: current_shard(), x, Shard(2, 7, 9))
    assert seen == Shard(2, 7, 9)


def test_chunks_keep_their_rows_of_the_whole_batch_draw(streams):
    """Per-sample draws made in chunks are the rows of the one draw for the whole batch."""
    streams(2)
    key = mx.random.key(5)

    def draw(batch):
        return sharded_draw(lambda shape: mx.random.normal(shape, key=key), (batch.shape[0], 3))

    whole = np.array(mx.random.normal((5, 3), key=key))
    parts = cpu_streams.map_chunks(draw, mx.zeros((5, 1)))
    np.testing.assert_array_equal(np.concatenate([np.array(p) for _, p in parts]), whole)
    # inside a data-parallel shard the chunks keep rows of the global batch's draw
    global_draw = np.array(mx.random.normal((10, 3), key=key))
    parts = cpu_streams.map_chunks(draw, mx.zeros((5, 1)), shard=Shard(4, 5, 10))
    np.testing.assert_array_equal(np.concatenate([np.array(p) for _, p in parts]), global_draw[4:9])


def test_chunks_are_not_split_again(streams):
    streams(2)
    inner = cpu_streams.map_chunks(lambda b: cpu_streams.batch_chunks(b.shape[0]), mx.zeros(6))
    assert [chunks for _, chunks in inner] == [[], []]


def test_every_chunk_draws_from_the_calls_generator_state(streams):
    """Global draws in chunks are the unsplit batch's: the generator restarts per chunk."""
    streams(2)
    mx.random.seed(3)
    whole = np.array(mx.random.normal((4, 2)))
    after_whole = np.array(mx.random.state[0])
    mx.random.seed(3)

    def draw(batch):
        return sharded_draw(lambda shape: mx.random.normal(shape), (batch.shape[0], 2))

    parts = cpu_streams.map_chunks(draw, mx.zeros(4))
    np.testing.assert_array_equal(np.concatenate([np.array(p) for _, p in parts]), whole)
    np.testing.assert_array_equal(np.array(mx.random.state[0]), after_whole)


def test_blas_threads_follow_the_split(streams, monkeypatch):
    if blas.num_threads() is None:
        pytest.skip("no BLAS with a settable thread count is loaded")
    before = blas.num_threads()
    monkeypatch.setattr(cpu_streams, "available_cores", lambda: 4)
    try:
        streams(2)
        cpu_streams.use_blas_threads(64)
        assert blas.num_threads() == 2  # 4 cores over 2 streams
        cpu_streams.use_blas_threads(1)
        assert blas.num_threads() == 4  # one row: nothing split, every core
        streams(1)
        cpu_streams.use_blas_threads(64)
        assert blas.num_threads() == 4
    finally:
        blas.set_num_threads(before)


def test_bfs_width_default_only_without_gpu_and_unset():
    env = {}
    assert cpu_streams.apply_cpu_defaults(False, env) == {"MLX_BFS_MAX_WIDTH": "1000"}
    assert env == {"MLX_BFS_MAX_WIDTH": "1000"}
    env = {"MLX_BFS_MAX_WIDTH": "50"}
    assert cpu_streams.apply_cpu_defaults(False, env) == {}
    assert env == {"MLX_BFS_MAX_WIDTH": "50"}
    env = {}
    assert cpu_streams.apply_cpu_defaults(True, env) == {}
    assert env == {}


def test_parameter_spread_balances_elements_over_the_streams(streams):
    streams(2)
    spread = cpu_streams.ParameterSpread()
    used = []
    for size in [100, 10, 10, 50, 30]:
        with spread.on(mx.zeros((size,))):
            used.append(mx.default_stream(mx.cpu))
    first, second = spread.streams
    # greedy by elements so far: 100 | 10, 10, 50 | then 30 on the lighter (70)
    assert used == [first, second, second, second, second]
    assert spread.loads == [100, 100]


def test_parameter_spread_changes_nothing_with_one_stream(streams):
    streams(1)
    spread = cpu_streams.ParameterSpread()
    default = mx.default_stream(mx.cpu)
    with spread.on(mx.zeros((4,))):
        assert mx.default_stream(mx.cpu) == default
    assert spread.streams == []


def test_optimizer_updates_on_streams_equal_the_plain_update(streams):
    from mlx.optimizers import AdamW

    streams(2)
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
    spread = cpu_streams.ParameterSpread()
    with spread.optimizer_updates(spread_opt):
        got = spread_opt.apply_gradients(grads, params)
    # the wrapper is gone afterwards, and the work went to both streams
    assert "apply_single" not in vars(spread_opt)
    assert all(load > 0 for load in spread.loads)
    for k in params:
        np.testing.assert_array_equal(np.array(got[k]), np.array(want[k]))
    assert spread_opt.state["step"].item() == plain.state["step"].item() == 1
