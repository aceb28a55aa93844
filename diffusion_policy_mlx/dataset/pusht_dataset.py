"""PushT keypoint demonstrations as ``(obs, action)`` windows (upstream's ``PushTLowdimDataset``)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import mlx.core as mx
import numpy as np

from diffusion_policy_mlx.common.replay_buffer import ReplayBuffer
from diffusion_policy_mlx.common.sampler import SequenceSampler, downsample_mask, get_val_mask
from diffusion_policy_mlx.dataset.base_dataset import BaseLowdimDataset
from diffusion_policy_mlx.dataset.source import load_replay_buffer
from diffusion_policy_mlx.model.common.normalizer import LinearNormalizer


class PushTLowdimDataset(BaseLowdimDataset):
    """Windows of ``horizon`` steps: ``obs`` ``(T, 2K+2)`` is the ``K`` block keypoints
    flattened, then the agent's ``(x, y)`` (the first two columns of ``state_key``);
    ``action`` is ``(T, Da)``.

    The split is upstream's: ``val_ratio`` of the episodes are held out, and at most
    ``max_train_episodes`` of the rest are trained on; :meth:`get_validation_dataset` covers every
    other episode (upstream's quirk: the held-out ones plus those ``max_train_episodes`` dropped).
    ``zarr_path`` is relative to the working directory, like upstream.
    """

    def __init__(
        self,
        zarr_path: str,
        horizon: int = 1,
        pad_before: int = 0,
        pad_after: int = 0,
        obs_key: str = "keypoint",
        state_key: str = "state",
        action_key: str = "action",
        seed: int = 42,
        val_ratio: float = 0.0,
        max_train_episodes: int | None = None,
    ):
        super().__init__()
        self.zarr_path = str(zarr_path)
        self.replay_buffer = load_replay_buffer(zarr_path, keys=[obs_key, state_key, action_key])
        _require_ndim(self.replay_buffer, obs_key, 2, "(N, K, 2) keypoints or (N, D)")
        _require_ndim(self.replay_buffer, state_key, 2, "(N, D>=2) with the agent (x, y) first")
        _require_ndim(self.replay_buffer, action_key, 2, "(N, Da)")
        if self.replay_buffer[state_key].shape[1] < 2:
            raise ValueError(
                f"{self.zarr_path}: data/{state_key} has shape "
                f"{self.replay_buffer[state_key].shape}; it needs at least 2 columns (agent x, y)."
            )

        val_mask = get_val_mask(
            n_episodes=self.replay_buffer.n_episodes, val_ratio=val_ratio, seed=seed
        )
        train_mask = downsample_mask(mask=~val_mask, max_n=max_train_episodes, seed=seed)
        self.sampler = SequenceSampler(
            replay_buffer=self.replay_buffer,
            sequence_length=horizon,
            pad_before=pad_before,
            pad_after=pad_after,
            episode_mask=train_mask,
        )
        self.obs_key = obs_key
        self.state_key = state_key
        self.action_key = action_key
        self.train_mask = train_mask
        self.horizon = horizon
        self.pad_before = pad_before
        self.pad_after = pad_after

    def __repr__(self) -> str:
        return f"PushTLowdimDataset({self.zarr_path!r}, {len(self)} samples)"

    def get_validation_dataset(self) -> PushTLowdimDataset:
        """Windows over every episode not trained on, sharing this dataset's replay buffer."""
        val_set = copy.copy(self)
        val_set.train_mask = ~self.train_mask
        val_set.sampler = SequenceSampler(
            replay_buffer=self.replay_buffer,
            sequence_length=self.horizon,
            pad_before=self.pad_before,
            pad_after=self.pad_after,
            episode_mask=val_set.train_mask,
        )
        return val_set

    def get_normalizer(self, mode: str = "limits", **kwargs) -> LinearNormalizer:
        """``obs`` and ``action`` normalizers fitted on all episodes (train and validation)."""
        normalizer = LinearNormalizer()
        normalizer.fit(
            data=self._sample_to_data(self.replay_buffer), last_n_dims=1, mode=mode, **kwargs
        )
        return normalizer

    def get_all_actions(self) -> mx.array:
        """``(N, Da)``: every recorded action of every episode."""
        return mx.array(self.replay_buffer[self.action_key])

    def __len__(self) -> int:
        return len(self.sampler)

    def _sample_to_data(self, sample: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw arrays with leading axes ``(...)`` -> ``{'obs': (..., Do), 'action': (..., Da)}``."""
        agent_pos = sample[self.state_key][..., :2]
        # flatten each step's keypoints: (..., K, 2) -> (..., 2K)
        keypoint = sample[self.obs_key].reshape(agent_pos.shape[:-1] + (-1,))
        return {
            "obs": np.concatenate([keypoint, agent_pos], axis=-1),
            "action": sample[self.action_key],
        }

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        """``{'obs': (T, Do), 'action': (T, Da)}``."""
        return self._sample_to_data(self.sampler.sample_sequence(idx))

    def __getitems__(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """``{'obs': (B, T, Do), 'action': (B, T, Da)}`` in one gather."""
        return self._sample_to_data(self.sampler.sample_sequences(indices))


def _require_ndim(buffer: ReplayBuffer, key: str, min_ndim: int, expected: str) -> None:
    shape = buffer[key].shape
    if len(shape) < min_ndim:
        raise ValueError(f"{buffer.source}: data/{key} has shape {shape}; expected {expected}.")
