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
  on 2 cores, see :meth:`CpuStreams.use_blas_threads`); two streams calling a 2-thread BLAS at
  once oversubscribe the cores and gain nothing.
* ``MLX_BFS_MAX_WIDTH``: MLX orders an evaluation's operations breadth-first up to this width
  (default 20), then depth-first. With the default, one chunk's graph is dispatched nearly
  whole before the other's and the streams take turns; :func:`apply_cpu_defaults` sets 1000
  for CPU runs (about 2 % more peak memory for the lowdim training step).

The stream count is ``accel.cpu_streams`` in a workspace config, overridden by the
``DP_MLX_CPU_STREAMS`` environment variable; by default one per core up to
:data:`DEFAULT_MAX_STREAMS` on the CPU (the split was measured on 2 cores) and 1 elsewhere; 1
turns splitting off. Nothing is split while MLX's default device is a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from diffusion_policy_mlx.accel import blas

import mlx.core as mx
from mlx.utils import tree_map

from diffusion_policy_mlx.common.batch_split import (
    BatchSplit,
    ParameterSpread,
    R,
    batch_rows,
)
from diffusion_policy_mlx.common.distributed import Shard, batch_shard, shard_bounds

ENV_VAR = "DP_MLX_CPU_STREAMS"
BFS_WIDTH_VAR = "MLX_BFS_MAX_WIDTH"
BFS_WIDTH = "1000"
# The default's cap: measured on 2 cores; more streams mean smaller GEMMs and more dispatch.
DEFAULT_MAX_STREAMS = 2

_streams: list[mx.Stream] = []
# Set while a chunk's work is traced: its rows are not split again.
_in_chunk = False
# How many chunks run side by side while one is traced (1 outside a split).
_active_chunks = 1


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def stream_count(setting: int | None, on_cpu: bool, environ: dict | None = None) -> int:
    """The stream count for ``accel.cpu_streams=setting``: ``DP_MLX_CPU_STREAMS`` when set,
    else ``setting``, else one per core (at most :data:`DEFAULT_MAX_STREAMS`) on the CPU and 1
    elsewhere."""
    environ = os.environ if environ is None else environ
    value = environ.get(ENV_VAR)
    if value is not None:
        if not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"{ENV_VAR}={value!r}: give a whole number of streams >= 1")
        return int(value)
    if setting is not None:
        if setting < 1:
            raise ValueError(
                f"accel.cpu_streams must be >= 1 (1 turns splitting off), got {setting}"
            )
        return int(setting)
    return min(available_cores(), DEFAULT_MAX_STREAMS) if on_cpu else 1


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


def cores_per_stream() -> int:
    """Cores each stream may use for work traced now: all of them outside a split, an equal
    share inside one (1 per chunk on 2 cores)."""
    return max(1, available_cores() // _active_chunks)


class CpuStreams(BatchSplit):
    """A :class:`~diffusion_policy_mlx.common.batch_split.BatchSplit` over ``count`` CPU
    streams (1: nothing is split)."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"CpuStreams: count must be >= 1, got {count}")
        self.count = count

    def chunks(self, batch_size: int) -> list[Chunk]:
        """The chunks a batch of ``batch_size`` rows is split into on the current default
        device: one per stream (at most one per row), or none when nothing is split (a GPU
        default device, one stream, a single row, or inside a chunk already)."""
        streams = _split_streams(min(self.count, batch_size))
        n = len(streams)
        return [Chunk(streams[i], *shard_bounds(batch_size, i, n)) for i in range(n)]

    def map_chunks(
        self, fn: Callable[[Any], R], batch: Any, shard: Shard | None = None
    ) -> list[tuple[float, R]] | None:
        """``fn`` on each chunk of ``batch``'s rows, each on its own CPU stream.

        Every chunk starts from the call's state of MLX's global generator and makes its
        per-sample draws (:func:`~diffusion_policy_mlx.common.distributed.sharded_draw`) for the
        whole batch (``shard``'s global batch when data-parallel), keeping its rows: the numbers
        the unsplit batch draws. Draws not made per sample (dropout masks) repeat in every chunk,
        as they repeat on every rank of data-parallel training.
        """
        global _in_chunk, _active_chunks
        rows = batch_rows(batch)
        chunks = self.chunks(rows)
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

    def spread(self) -> ParameterSpread:
        """Per-parameter work spread over the streams: MLX's CPU elementwise kernels run on one
        thread, so the AdamW and EMA updates of the hybrid policy's 263M parameters kept one
        core busy and the other idle for a third of its training step."""
        return ParameterSpread(_split_streams(self.count))

    def use_blas_threads(self, batch_size: int) -> None:
        """Give the BLAS the cores left per stream where ``batch_size`` rows are split (1
        thread per stream on 2 cores), all cores where they are not."""
        if _in_chunk:  # the enclosing split chose
            return
        n_chunks = max(1, len(self.chunks(batch_size)))
        blas.set_num_threads(max(1, available_cores() // n_chunks))


def apply_cpu_defaults(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set ``MLX_BFS_MAX_WIDTH`` in ``environ`` where unset (MLX reads it at the first
    evaluation); returns what it set. For runs on the CPU."""
    if BFS_WIDTH_VAR in environ:
        return {}
    environ[BFS_WIDTH_VAR] = BFS_WIDTH
    return {BFS_WIDTH_VAR: BFS_WIDTH}
