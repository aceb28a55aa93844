"""Split batched work over several MLX CPU streams, so that every core shares all of it.

On the CPU only MLX's BLAS calls (matmuls, convolutions) use more than one core; its
elementwise, reduction, normalization and copy kernels run on one thread. In a training step
those are a third of the time, during which the other cores wait. MLX runs each stream's
operations on that stream's own thread, so a batch cut into one chunk per core, each chunk's
work on its own stream, keeps every core busy through all of it: one single-threaded BLAS call
per stream replaces one multi-threaded call, and the single-threaded kernels run side by side.
The chunks' results are those of the whole batch (training: gradients weighted by chunk size;
per-sample noise: each chunk's rows of the whole batch's draw), up to float summation order.

Two settings make it pay:

* BLAS threads: while chunks run, each stream's BLAS calls get ``cores // streams`` threads (1
  on 2 cores, see :func:`use_blas_threads`); two streams calling a 2-thread BLAS at once
  oversubscribe the cores and gain nothing.
* ``MLX_BFS_MAX_WIDTH``: MLX orders an evaluation's operations breadth-first up to this width
  (default 20), then depth-first. With the default, one chunk's graph is dispatched nearly
  whole before the other's and the streams take turns; :func:`apply_cpu_defaults` sets 1000
  where MLX has no GPU (about 2 % more peak memory for the lowdim training step).

The stream count is ``training.cpu_streams`` in a workspace config, the ``DP_MLX_CPU_STREAMS``
environment variable, or, by default, one per core up to :data:`DEFAULT_MAX_STREAMS` where MLX
has no GPU (the machines :func:`apply_cpu_defaults` widens the BFS for; the split was measured on
2 cores) and 1 elsewhere; 1 turns splitting off. Nothing changes when MLX's default device is a
GPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map

from diffusion_policy_mlx.accel import blas
from diffusion_policy_mlx.common.distributed import Shard, batch_shard, shard_bounds

R = TypeVar("R")

ENV_VAR = "DP_MLX_CPU_STREAMS"
BFS_WIDTH_VAR = "MLX_BFS_MAX_WIDTH"
BFS_WIDTH = "1000"
# The default's cap: measured on 2 cores; more streams mean smaller GEMMs and more dispatch.
DEFAULT_MAX_STREAMS = 2

_count: int | None = None
_streams: list[mx.Stream] = []
# Set while a chunk's work is traced: its rows are not split again.
_in_chunk = False
# How many chunks run side by side while one is traced (1 outside a split).
_active_chunks = 1


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def set_cpu_streams(n: int | None) -> None:
    """Use ``n`` CPU streams from now on; ``None``: ``DP_MLX_CPU_STREAMS`` or the default."""
    global _count
    if n is not None and n < 1:
        raise ValueError(f"training.cpu_streams must be >= 1 (1 turns splitting off), got {n}")
    _count = n


def cpu_streams() -> int:
    """How many CPU streams batched work is split over (1: not split)."""
    if _count is not None:
        return _count
    value = os.environ.get(ENV_VAR)
    if value is None:
        return 1 if mx.is_available(mx.gpu) else min(available_cores(), DEFAULT_MAX_STREAMS)
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{ENV_VAR}={value!r}: give a whole number of streams >= 1")
    return int(value)


@dataclass(frozen=True)
class Chunk:
    """Rows ``[start, stop)`` of a batch, to be computed on ``stream``."""

    stream: mx.Stream
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def _split_streams(n: int) -> list[mx.Stream]:
    """The first ``n`` of the streams work is split over (none for ``n < 2``, on a GPU default
    device, or inside a chunk already)."""
    if n < 2 or _in_chunk or mx.default_device() != mx.cpu:
        return []
    while len(_streams) < n:
        _streams.append(mx.new_stream(mx.cpu))
    return _streams[:n]


def batch_chunks(batch_size: int) -> list[Chunk]:
    """The chunks a batch of ``batch_size`` rows is split into on the current default device:
    one per CPU stream (at most one per row), or none when nothing is split (a GPU default
    device, one stream, a single row, or inside a chunk already)."""
    streams = _split_streams(min(cpu_streams(), batch_size))
    n = len(streams)
    return [Chunk(streams[i], *shard_bounds(batch_size, i, n)) for i in range(n)]


class ParameterSpread:
    """Spreads per-parameter elementwise work (an optimizer's update, the EMA's averaging)
    over the CPU streams, each parameter whole on the stream with the fewest elements so far.

    MLX's CPU elementwise kernels run on one thread, so the AdamW and EMA updates of the hybrid
    policy's 263M parameters kept one core busy and the other idle for a third of its training
    step. ``with spread.on(parameter):`` traces what follows on that parameter's stream; with
    one stream (or on a GPU) it changes nothing. The assignment follows the order of the calls,
    which is the parameter tree's, so every trace makes the same one.
    """

    def __init__(self) -> None:
        self.streams = _split_streams(cpu_streams())
        self.loads = [0] * len(self.streams)

    @contextmanager
    def on(self, parameter: mx.array) -> Iterator[None]:
        if not self.streams:
            yield
            return
        i = self.loads.index(min(self.loads))
        self.loads[i] += parameter.size
        with mx.stream(self.streams[i]):
            yield

    @contextmanager
    def optimizer_updates(self, optimizer: Any) -> Iterator[None]:
        """Within, each parameter's ``optimizer.apply_single`` (an ``mlx.optimizers`` optimizer)
        is traced on its stream; the step count and learning-rate schedule stay where they
        are."""
        apply_single = optimizer.apply_single

        def on_stream(gradient: mx.array, parameter: mx.array, state: dict) -> mx.array:
            with self.on(parameter):
                return apply_single(gradient, parameter, state)

        optimizer.apply_single = on_stream
        try:
            yield
        finally:
            del optimizer.apply_single


def batch_rows(batch: Any) -> int:
    """Rows of a batch tree (``{"obs": ..., "action": (B, T, Da)}``): its first leaf's first
    axis."""
    return tree_flatten(batch)[0][1].shape[0]


def map_chunks(
    fn: Callable[[Any], R], batch: Any, shard: Shard | None = None
) -> list[tuple[float, R]] | None:
    """``fn`` on each chunk of ``batch``'s rows, each on its own CPU stream; ``None`` when the
    batch is not split (see :func:`batch_chunks`). Returns ``(weight, fn(rows))`` per chunk,
    ``weight`` being the chunk's fraction of the batch, so that the weighted sum of per-chunk
    means is the batch mean.

    Every chunk starts from the call's state of MLX's global generator and makes its
    per-sample draws (:func:`~diffusion_policy_mlx.common.distributed.sharded_draw`) for the
    whole batch (``shard``'s global batch when data-parallel), keeping its rows: the numbers
    the unsplit batch draws. Draws not made per sample (dropout masks) repeat in every chunk,
    as they repeat on every rank of data-parallel training.
    """
    global _in_chunk, _active_chunks
    rows = batch_rows(batch)
    chunks = batch_chunks(rows)
    if not chunks:
        return None
    offset, total = (0, rows) if shard is None else (shard.offset, shard.global_size)
    start_key = mx.random.state[0]
    results = []
    for chunk in chunks:
        # in place: compiled functions capture MLX's global random state by reference
        mx.random.state[0][...] = start_key
        sub_shard = Shard(offset + chunk.start, chunk.size, total)
        _in_chunk, _active_chunks = True, len(chunks)
        try:
            with mx.stream(chunk.stream), batch_shard(sub_shard):
                part = tree_map(lambda x, r=slice(chunk.start, chunk.stop): x[r], batch)
                results.append((chunk.size / rows, fn(part)))
        finally:
            _in_chunk, _active_chunks = False, 1
    return results


def chunked_mean(fn: Callable[[Any], R], batch: Any, shard: Shard | None = None) -> R:
    """``fn(batch)`` for an ``fn`` that returns batch means (a loss; a loss and its gradients),
    split over the CPU streams where :func:`map_chunks` splits the batch: the chunks' trees
    weighted by chunk size and summed. Unsplit, ``fn`` runs under ``batch_shard(shard)``."""
    parts = map_chunks(fn, batch, shard)
    if parts is None:
        with batch_shard(shard):
            return fn(batch)
    total = None
    for weight, value in parts:
        scaled = tree_map(lambda x, w=weight: x * w, value)
        total = scaled if total is None else tree_map(lambda a, b: a + b, total, scaled)
    return total


def cores_per_stream() -> int:
    """Cores each stream may use for work traced now: all of them outside a split, an equal
    share inside one (1 per chunk on 2 cores)."""
    return max(1, available_cores() // _active_chunks)


def use_blas_threads(batch_size: int) -> None:
    """Before building the graph of work over ``batch_size`` rows: give the BLAS the cores
    left per stream where the rows are split (1 thread per stream on 2 cores), all cores
    where they are not. Takes effect for the BLAS calls that start after it."""
    if _in_chunk:  # the enclosing split chose
        return
    n_chunks = max(1, len(batch_chunks(batch_size)))
    blas.set_num_threads(max(1, available_cores() // n_chunks))


def apply_cpu_defaults(
    gpu_available: bool, environ: MutableMapping[str, str] = os.environ
) -> dict[str, str]:
    """Set ``MLX_BFS_MAX_WIDTH`` in ``environ`` where unset and MLX has no GPU (MLX reads it at
    the first evaluation); returns what it set."""
    if gpu_available or BFS_WIDTH_VAR in environ:
        return {}
    environ[BFS_WIDTH_VAR] = BFS_WIDTH
    return {BFS_WIDTH_VAR: BFS_WIDTH}
