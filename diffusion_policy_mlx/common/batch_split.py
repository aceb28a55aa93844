"""How the training step and the sampler lay out a batch's work: whole, or cut into row chunks.

:class:`BatchSplit` keeps every batch whole; it is what a policy runs with unless
:func:`diffusion_policy_mlx.accel.apply` gives it accel's ``CpuStreams``, which cuts a batch into
one chunk per MLX CPU stream. Both give the same results up to float summation order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map

from diffusion_policy_mlx.common.distributed import Shard, batch_shard

R = TypeVar("R")


def batch_rows(batch: Any) -> int:
    """Rows of a batch tree (``{"obs": ..., "action": (B, T, Da)}``): its first leaf's first
    axis."""
    return tree_flatten(batch)[0][1].shape[0]


class ParameterSpread:
    """Spreads per-parameter elementwise work (an optimizer's update, the EMA's averaging)
    over ``streams``, each parameter whole on the stream with the fewest elements so far.

    ``with spread.on(parameter):`` traces what follows on that parameter's stream; without
    streams it changes nothing. The assignment follows the order of the calls, which is the
    parameter tree's, so every trace makes the same one.
    """

    def __init__(self, streams: Sequence[mx.Stream] = ()) -> None:
        self.streams = list(streams)
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


class BatchSplit:
    """Keeps every batch whole: the layout a policy has unless accel gives it another."""

    def map_chunks(
        self, fn: Callable[[Any], R], batch: Any, shard: Shard | None = None
    ) -> list[tuple[float, R]] | None:
        """``[(weight, fn(rows))]`` per chunk of ``batch``'s rows, ``weight`` being the chunk's
        fraction of the batch; ``None`` when the batch stays whole."""
        return None

    def chunked_mean(self, fn: Callable[[Any], R], batch: Any, shard: Shard | None = None) -> R:
        """``fn(batch)`` for an ``fn`` that returns batch means (a loss; a loss and its
        gradients), over the chunks of :meth:`map_chunks` weighted by their size where it
        splits the batch. Whole, ``fn`` runs under ``batch_shard(shard)``."""
        parts = self.map_chunks(fn, batch, shard)
        if parts is None:
            with batch_shard(shard):
                return fn(batch)
        total = None
        for weight, value in parts:
            scaled = tree_map(lambda x, w=weight: x * w, value)
            total = scaled if total is None else tree_map(lambda a, b: a + b, total, scaled)
        return total

    def spread(self) -> ParameterSpread:
        """A :class:`ParameterSpread` over the streams batches are split over (none here)."""
        return ParameterSpread()

    def use_blas_threads(self, batch_size: int) -> None:
        """Before building the graph of work over ``batch_size`` rows: size the BLAS's thread
        pool for the split (nothing to do when batches stay whole)."""
