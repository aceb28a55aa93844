"""Data-parallel training over processes with ``mx.distributed`` (started by ``mlx.launch``).

Every rank holds the whole model and sees a contiguous slice, its *shard*, of every global
batch; gradients are averaged across ranks, weighted by shard size, so one optimizer step
equals the 1-process step on the global batch. Random draws made per sample (diffusion noise
and timesteps, image crop corners) go through :func:`sharded_draw`: with identical generator
states on all ranks (same seed) each rank draws for the whole global batch and keeps its rows,
so a run on N processes follows a 1-process run's loss curve to float rounding.

Nothing here changes a 1-process run: outside a :func:`batch_shard` context every function
draws, averages and waits exactly as if this module did not exist.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten


@dataclass(frozen=True)
class Shard:
    """Rows ``[offset, offset + size)`` of a global batch of ``global_size`` samples."""

    offset: int
    size: int
    global_size: int

    @property
    def weight(self) -> float:
        """This shard's fraction of the global batch."""
        return self.size / self.global_size


def shard_bounds(global_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, stop)`` of ``rank``'s contiguous part of ``global_size`` rows; the first
    ``global_size % world_size`` ranks get one row more."""
    base, extra = divmod(global_size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


_current_shard: Shard | None = None


@contextlib.contextmanager
def batch_shard(shard: Shard | None) -> Iterator[None]:
    """Make :func:`sharded_draw` draw for ``shard``'s global batch while tracing a step."""
    global _current_shard
    previous, _current_shard = _current_shard, shard
    try:
        yield
    finally:
        _current_shard = previous


def current_shard() -> Shard | None:
    """The shard of the innermost :func:`batch_shard` context, if any."""
    return _current_shard


def sharded_draw(draw: Callable[[tuple[int, ...]], mx.array], shape: tuple[int, ...]) -> mx.array:
    """``draw(shape)``, or, inside :func:`batch_shard`, this shard's rows of the draw for the
    global batch: the numbers a 1-process run would draw for these samples.

    ``shape[0]`` is the shard's batch size times ``k`` rows per sample, sample-major (as
    ``(B, T, ...)`` reshaped to ``(B * T, ...)`` is), ``k >= 1``.
    """
    shard = _current_shard
    if shard is None:
        return draw(tuple(shape))
    k, rest = divmod(shape[0], shard.size)
    if rest or k == 0:
        raise ValueError(
            f"sharded_draw: {shape[0]} rows are not a whole number of rows per sample of a "
            f"{shard.size}-sample shard; draws inside batch_shard must be per sample"
        )
    rows = draw((shard.global_size * k, *shape[1:]))
    return rows[shard.offset * k : (shard.offset + shard.size) * k]


def init_group() -> mx.distributed.Group | None:
    """The group of all processes ``mlx.launch`` started, or ``None`` for a single process."""
    group = mx.distributed.init()
    return group if group.size() > 1 else None


def rank_of(group: mx.distributed.Group | None) -> int:
    return 0 if group is None else group.rank()


def world_size_of(group: mx.distributed.Group | None) -> int:
    return 1 if group is None else group.size()


def average_gradients(grads: dict, shard: Shard, group: mx.distributed.Group) -> dict:
    """Gradients of the global batch's mean loss from each rank's shard-mean gradients:
    ``sum_r size_r g_r / global_size``, in a few large all-reduces."""
    world = group.size()
    scaled = nn.utils.tree_map(lambda g: g * (shard.weight * world), grads)
    return nn.average_gradients(scaled, group=group)


def global_mean(value: mx.array, shard: Shard, group: mx.distributed.Group) -> mx.array:
    """The global batch's mean of a shard-mean scalar (the loss a 1-process run logs)."""
    return mx.distributed.all_sum(value * shard.weight, group=group)


def barrier(group: mx.distributed.Group | None) -> None:
    """Wait until every rank gets here (no-op for a single process)."""
    if group is not None:
        mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group))


def broadcast_int(value: int, group: mx.distributed.Group | None) -> int:
    """Rank 0's ``value`` on every rank."""
    if group is None:
        return value
    mine = mx.array(value if group.rank() == 0 else 0, dtype=mx.int64)
    return int(mx.distributed.all_sum(mine, group=group).item())


def broadcast_str(value: str, group: mx.distributed.Group | None) -> str:
    """Rank 0's ``value`` on every rank."""
    if group is None:
        return value
    data = value.encode() if group.rank() == 0 else b""
    length = broadcast_int(len(data), group)
    mine = mx.zeros((length,), dtype=mx.int32)
    if group.rank() == 0:
        mine = mx.array(list(data), dtype=mx.int32)
    return bytes(mx.distributed.all_sum(mine, group=group).tolist()).decode()


def sync_random_state(group: mx.distributed.Group | None) -> None:
    """Give every rank rank 0's global MLX generator state.

    Rank 0 alone samples during evaluations (rollouts, the sampled-action error), which
    advances its generator; without this the ranks' per-sample draws would part ways."""
    if group is None:
        return
    state = mx.random.state[0]
    mine = state if group.rank() == 0 else mx.zeros_like(state)
    # In place: compiled functions capture MLX's global random state by reference.
    state[...] = mx.distributed.all_sum(mine, group=group)
    mx.eval(state)


def check_replicas_agree(module: nn.Module, group: mx.distributed.Group | None) -> None:
    """Raise if any parameter of ``module`` differs between ranks (compared by checksum)."""
    if group is None:
        return
    names, sums = [], []
    for name, value in tree_flatten(module.parameters()):
        names.append(name)
        sums.append(mx.sum(value.astype(mx.float32)))
    mine = mx.stack(sums)
    mean = mx.distributed.all_sum(mine, group=group) / group.size()
    differs = mx.abs(mean - mine) > 0
    mx.eval(differs)
    if differs.any().item():
        first = names[int(mx.argmax(differs).item())]
        raise RuntimeError(
            f"rank {group.rank()}: parameters differ between ranks (first: {first}); the ranks "
            "did not start from the same weights or did not apply the same updates"
        )
