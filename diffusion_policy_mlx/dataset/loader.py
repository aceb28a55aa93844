"""Batches of ``mx.array`` s from a dataset, where upstream uses ``torch.utils.data.DataLoader``.

``DataLoader(dataset, **cfg.dataloader)`` accepts upstream's config keys. Worker threads (not
processes: the gather and the copies release the GIL, and threads share the in-memory replay
buffer without pickling it) gather index batches, stack them and convert them to ``mx.array``
ahead of the training loop, ``prefetch_factor`` batches per worker.

Shuffling is deterministic: epoch ``e`` visits ``np.random.default_rng([seed, e]).permutation``.
Each pass over the loader uses the next epoch; :meth:`DataLoader.set_epoch` picks the epoch of
the next pass, so a run resumed at epoch ``e`` sees exactly the batches it would have seen.

In data-parallel training (``rank``/``world_size``) every rank computes the same global batches
and loads only its contiguous shard of each (:func:`~.common.distributed.shard_bounds`); a
final global batch smaller than ``world_size`` is dropped on every rank.
"""

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Any

import mlx.core as mx
import numpy as np

from diffusion_policy_mlx.common.distributed import Shard, shard_bounds
from diffusion_policy_mlx.common.pytree import dict_apply
from diffusion_policy_mlx.dataset.base_dataset import BaseImageDataset, BaseLowdimDataset, collate


class DataLoader:
    """Iterate over ``dataset`` in batches of nested dicts of ``mx.array`` s.

    Args:
        dataset: anything with ``__len__`` and ``__getitem__`` returning dicts of arrays; this
            package's datasets are fetched a whole batch at a time through ``__getitems__``.
        batch_size: samples per batch ``B``.
        shuffle: visit samples in a fresh random order every epoch.
        num_workers: background threads preparing batches (capped at the usable CPU cores); 0
            prepares them in the caller.
        pin_memory: accepted for upstream configs; MLX has no pinned host memory to request.
        persistent_workers: accepted for upstream configs; threads cost nothing to restart.
        drop_last: drop the last batch when it is smaller than ``batch_size``.
        seed: seed of the shuffle; ``None`` draws one from numpy's global generator, so a run
            that seeds numpy (as the workspace does) is reproducible.
        prefetch_factor: batches each worker prepares ahead.
        rank, world_size: this process's rank and the number of data-parallel processes;
            ``batch_size`` is the global batch, of which this rank loads its shard.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int = 1,
        shuffle: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        drop_last: bool = False,
        seed: int | None = None,
        prefetch_factor: int = 2,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {num_workers}.")
        if prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be at least 1, got {prefetch_factor}.")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}.")
        if batch_size < world_size:
            raise ValueError(
                f"batch_size={batch_size} is smaller than the {world_size} data-parallel "
                "processes; every process needs at least one sample per batch."
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.drop_last = drop_last
        self.seed = int(np.random.randint(2**31)) if seed is None else seed
        self.prefetch_factor = prefetch_factor
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.dataset)
        full, rest = divmod(n, self.batch_size)
        return full + (not self.drop_last and rest >= self.world_size)

    @property
    def n_threads(self) -> int:
        """Worker threads used: ``num_workers``, at most one per CPU core this process may use
        (more cannot gather faster, and each holds ``prefetch_factor`` batches in memory)."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, min(self.num_workers, cores or 1))

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass over the loader epoch ``epoch`` (its shuffle order)."""
        self.epoch = epoch

    def batch_indices(self, epoch: int) -> list[np.ndarray]:
        """The dataset indices of every batch of ``epoch``, in order."""
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            order = np.arange(n)
        stop = n - n % self.batch_size if self.drop_last else n
        batches = [order[i : i + self.batch_size] for i in range(0, stop, self.batch_size)]
        return [b for b in batches if len(b) >= self.world_size]

    def shards(self, epoch: int) -> list[Shard]:
        """This rank's part of every batch of ``epoch``, in order."""
        shards = []
        for indices in self.batch_indices(epoch):
            start, stop = shard_bounds(len(indices), self.rank, self.world_size)
            shards.append(Shard(start, stop - start, len(indices)))
        return shards

    def local_indices(self, epoch: int) -> list[np.ndarray]:
        """The dataset indices this rank loads for every batch of ``epoch``."""
        return [
            indices[shard.offset : shard.offset + shard.size]
            for indices, shard in zip(self.batch_indices(epoch), self.shards(epoch), strict=True)
        ]

    def load_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """Samples ``indices`` as one batch: nested dicts of ``(B, ...)`` ``mx.array`` s."""
        if isinstance(self.dataset, BaseLowdimDataset | BaseImageDataset):
            batch = self.dataset.__getitems__(indices)
        else:
            batch = collate([self.dataset[int(i)] for i in indices])
        return dict_apply(batch, mx.array)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batches = self.local_indices(self.epoch)
        self.epoch += 1
        if self.num_workers == 0:
            for indices in batches:
                yield self.load_batch(indices)
            return
        threads = self.n_threads
        pool = ThreadPoolExecutor(threads, thread_name_prefix="DataLoader")
        try:
            todo = iter(batches)
            ahead = islice(todo, threads * self.prefetch_factor)
            pending: deque[Future] = deque(pool.submit(self.load_batch, i) for i in ahead)
            while pending:
                batch = pending.popleft().result()
                indices = next(todo, None)
                if indices is not None:
                    pending.append(pool.submit(self.load_batch, indices))
                yield batch
        finally:
            # a consumer that stops early must not wait for batches nobody will read
            pool.shutdown(wait=True, cancel_futures=True)
