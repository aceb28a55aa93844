"""PushT keypoint demonstrations as ``(obs, action)`` windows (upstream's ``PushTLowdimDataset``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from diffusion_policy_mlx.common.replay_buffer import ReplayBuffer
from diffusion_policy_mlx.dataset.base_dataset import BaseLowdimDataset
from diffusion_policy_mlx.dataset.sequence_dataset import ReplaySequenceDataset
from diffusion_policy_mlx.model.common.normalizer import LinearNormalizer


class PushTLowdimDataset(ReplaySequenceDataset, BaseLowdimDataset):
    """Windows of ``horizon`` steps: ``obs`` ``(T, 2K+2)`` is the ``K`` block keypoints
    flattened, then the agent's ``(x, y)`` (the first two columns of ``state_key``);
    ``action`` is ``(T, Da)``.

    Split and ``zarr_path`` semantics: :class:`ReplaySequenceDataset`.
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
        self.open_buffer(zarr_path, [obs_key, state_key, action_key])
        _require_ndim(self.replay_buffer, obs_key, 2, "(N, K, 2) keypoints or (N, D)")
        _require_ndim(self.replay_buffer, state_key, 2, "(N, D>=2) with the agent (x, y) first")
        _require_ndim(self.replay_buffer, action_key, 2, "(N, Da)")
        if self.replay_buffer[state_key].shape[1] < 2:
            raise ValueError(
                f"{self.zarr_path}: data/{state_key} has shape "
                f"{self.replay_buffer[state_key].shape}; it needs at least 2 columns (agent x, y)."
            )

        self.obs_key = obs_key
        self.state_key = state_key
        self.action_key = action_key
        self.split_episodes(horizon, pad_before, pad_after, seed, val_ratio, max_train_episodes)

    def get_normalizer(self, mode: str = "limits", **kwargs) -> LinearNormalizer:
        """``obs`` and ``action`` normalizers fitted on all episodes (train and validation)."""
        normalizer = LinearNormalizer()
        normalizer.fit(
            data=self._sample_to_data(self.replay_buffer), last_n_dims=1, mode=mode, **kwargs
        )
        return normalizer

    def _sample_to_data(self, sample: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw arrays with leading axes ``(...)`` -> ``{'obs': (..., Do), 'action': (..., Da)}``."""
        agent_pos = sample[self.state_key][..., :2]
        # flatten each step's keypoints: (..., K, 2) -> (..., 2K)
        keypoint = sample[self.obs_key].reshape(agent_pos.shape[:-1] + (-1,))
        return {
            "obs": np.concatenate([keypoint, agent_pos], axis=-1),
            "action": sample[self.action_key],
        }


def _require_ndim(buffer: ReplayBuffer, key: str, min_ndim: int, expected: str) -> None:
    shape = buffer[key].shape
    if len(shape) < min_ndim:
        raise ValueError(f"{buffer.source}: data/{key} has shape {shape}; expected {expected}.")
