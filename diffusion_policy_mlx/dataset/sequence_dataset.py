"""What every replay-buffer dataset shares: upstream's episode split, the sequence sampler over
it, the validation copy and the batched access.

A task's dataset (``PushTLowdimDataset``, ``PushTImageDataset``, ...) mixes
:class:`ReplaySequenceDataset` in next to ``BaseLowdimDataset`` or ``BaseImageDataset``, opens
its replay buffer (:meth:`~ReplaySequenceDataset.open_buffer`), checks the arrays it reads,
splits the episodes (:meth:`~ReplaySequenceDataset.split_episodes`) and says how raw arrays
become a sample (``_sample_to_data``) and how its normalizer is fitted.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import mlx.core as mx
import numpy as np

from diffusion_policy_mlx.common.sampler import SequenceSampler, downsample_mask, get_val_mask
from diffusion_policy_mlx.dataset.source import load_replay_buffer


class ReplaySequenceDataset:
    """Windows of ``horizon`` steps over a replay buffer's episodes.

    The split is upstream's: ``val_ratio`` of the episodes are held out, and at most
    ``max_train_episodes`` of the rest are trained on; :meth:`get_validation_dataset` covers
    every other episode (upstream's quirk: the held-out ones plus those ``max_train_episodes``
    dropped). ``zarr_path`` is relative to the working directory, like upstream.
    """

    action_key = "action"

    def open_buffer(self, zarr_path: str, keys: Sequence[str]) -> None:
        """Load ``keys`` of the replay buffer at ``zarr_path`` (downloaded first when it is a
        registered dataset) into memory, with the data checks of
        :func:`~diffusion_policy_mlx.dataset.source.load_replay_buffer`."""
        self.zarr_path = str(zarr_path)
        self.replay_buffer = load_replay_buffer(zarr_path, keys=keys)

    def split_episodes(
        self,
        horizon: int,
        pad_before: int,
        pad_after: int,
        seed: int,
        val_ratio: float,
        max_train_episodes: int | None,
        key_first_steps: Mapping[str, int] | None = None,
    ) -> None:
        """Hold out the validation episodes and sample windows over the training ones;
        ``key_first_steps`` reads only the first steps of some keys (see
        :class:`~diffusion_policy_mlx.common.sampler.SequenceSampler`)."""
        val_mask = get_val_mask(
            n_episodes=self.replay_buffer.n_episodes, val_ratio=val_ratio, seed=seed
        )
        self.train_mask = downsample_mask(mask=~val_mask, max_n=max_train_episodes, seed=seed)
        self.horizon = horizon
        self.pad_before = pad_before
        self.pad_after = pad_after
        self.key_first_steps = dict(key_first_steps or {})
        self.sampler = self._sampler(self.train_mask)

    def _sampler(self, episode_mask: np.ndarray) -> SequenceSampler:
        return SequenceSampler(
            replay_buffer=self.replay_buffer,
            sequence_length=self.horizon,
            pad_before=self.pad_before,
            pad_after=self.pad_after,
            episode_mask=episode_mask,
            key_first_steps=self.key_first_steps,
        )

    def get_validation_dataset(self) -> Any:
        """Windows over every episode not trained on, sharing this dataset's replay buffer."""
        val_set = copy.copy(self)
        val_set.train_mask = ~self.train_mask
        val_set.sampler = self._sampler(val_set.train_mask)
        return val_set

    def get_all_actions(self) -> mx.array:
        """``(N, Da)``: every recorded action of every episode."""
        return mx.array(self.replay_buffer[self.action_key])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.zarr_path!r}, {len(self)} samples)"

    def __len__(self) -> int:
        return len(self.sampler)

    def _sample_to_data(self, sample: Mapping[str, np.ndarray]) -> dict:
        """Sampled raw arrays with leading axes ``(...)`` -> the dataset's sample dict."""
        raise NotImplementedError

    def __getitem__(self, idx: int) -> dict:
        return self._sample_to_data(self.sampler.sample_sequence(idx))

    def __getitems__(self, indices: Sequence[int] | np.ndarray) -> dict:
        """The samples ``indices`` stacked, in one gather: every array gains a leading ``B``
        axis."""
        return self._sample_to_data(self.sampler.sample_sequences(indices))
