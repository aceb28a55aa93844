"""Fixed-length windows over the episodes of a :class:`ReplayBuffer`, as upstream samples them.

Every window of ``sequence_length`` steps that starts between ``-pad_before`` and
``episode_length - sequence_length + pad_after`` is a sample; steps outside the episode repeat
its first or last frame. The index tables and train/validation masks match upstream's numba
implementation exactly; here they are computed with vectorized numpy.
"""

from collections.abc import Mapping, Sequence

import numpy as np

from diffusion_policy_mlx.common.replay_buffer import ReplayBuffer


def create_indices(
    episode_ends: np.ndarray,
    sequence_length: int,
    episode_mask: np.ndarray,
    pad_before: int = 0,
    pad_after: int = 0,
) -> np.ndarray:
    """The ``(N, 4)`` int64 table of all windows of the episodes selected by ``episode_mask``.

    Rows are ``(buffer_start, buffer_end, sample_start, sample_end)``: the window's data are
    buffer rows ``buffer_start:buffer_end``, placed at ``sample_start:sample_end`` of the
    ``sequence_length`` output; the rest is padding. Rows come episode by episode, windows in
    order of their start step. Pads are clipped to ``[0, sequence_length - 1]``.
    """
    episode_ends = np.asarray(episode_ends, dtype=np.int64)
    episode_mask = np.asarray(episode_mask, dtype=bool)
    if episode_mask.shape != episode_ends.shape:
        raise ValueError(
            f"episode_mask has shape {episode_mask.shape} but there are "
            f"{episode_ends.shape[0]} episodes."
        )
    pad_before = min(max(pad_before, 0), sequence_length - 1)
    pad_after = min(max(pad_after, 0), sequence_length - 1)

    all_lengths = np.diff(episode_ends, prepend=0)
    lengths = all_lengths[episode_mask]
    starts = (episode_ends - all_lengths)[episode_mask]
    # window starts (relative to the episode) run from -pad_before to length - T + pad_after
    n_windows = np.maximum(lengths - sequence_length + pad_after + pad_before + 1, 0)
    episode = np.repeat(np.arange(len(starts)), n_windows)
    first_row = np.cumsum(n_windows) - n_windows
    idx = np.arange(int(n_windows.sum()), dtype=np.int64) - first_row[episode] - pad_before

    start, length = starts[episode], lengths[episode]
    buffer_start = np.maximum(idx, 0) + start
    buffer_end = np.minimum(idx + sequence_length, length) + start
    sample_start = buffer_start - (idx + start)
    sample_end = sequence_length - ((idx + sequence_length + start) - buffer_end)
    return np.stack([buffer_start, buffer_end, sample_start, sample_end], axis=1)


def get_val_mask(n_episodes: int, val_ratio: float, seed: int = 0) -> np.ndarray:
    """``(n_episodes,)`` bool: a random ``val_ratio`` share of episodes (at least one, and at
    least one left for training), drawn like upstream with ``np.random.default_rng(seed)``."""
    val_mask = np.zeros(n_episodes, dtype=bool)
    if val_ratio <= 0:
        return val_mask
    n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    rng = np.random.default_rng(seed=seed)
    val_mask[rng.choice(n_episodes, size=n_val, replace=False)] = True
    return val_mask


def downsample_mask(mask: np.ndarray, max_n: int | None, seed: int = 0) -> np.ndarray:
    """Keep a random ``max_n`` of the episodes set in ``mask`` (all of them when ``max_n`` is
    ``None`` or not smaller), drawn like upstream with a fresh ``np.random.default_rng(seed)``."""
    if max_n is None or np.sum(mask) <= max_n:
        return mask
    current = np.nonzero(mask)[0]
    rng = np.random.default_rng(seed=seed)
    kept = current[rng.choice(len(current), size=int(max_n), replace=False)]
    train_mask = np.zeros_like(mask)
    train_mask[kept] = True
    return train_mask


class SequenceSampler:
    """Windows of ``sequence_length`` steps over the episodes of ``replay_buffer``.

    ``keys`` picks the arrays to read (all by default). ``key_first_k[key] = k`` reads only the
    first ``k`` data steps of ``key`` (observations the policy sees only for ``n_obs_steps``);
    the steps after them are NaN so that a bug that reads them shows. ``key_first_steps[key] = k``
    returns only the first ``k`` output steps of ``key``, ``(B, k, ...)``: the same values as the
    full window's ``[:, :k]`` without gathering, converting and copying the rest.
    """

    def __init__(
        self,
        replay_buffer: ReplayBuffer,
        sequence_length: int,
        pad_before: int = 0,
        pad_after: int = 0,
        keys: Sequence[str] | None = None,
        key_first_k: Mapping[str, int] | None = None,
        episode_mask: np.ndarray | None = None,
        key_first_steps: Mapping[str, int] | None = None,
    ):
        if sequence_length < 1:
            raise ValueError(f"sequence_length must be at least 1, got {sequence_length}.")
        episode_ends = replay_buffer.episode_ends
        if episode_mask is None:
            episode_mask = np.ones(episode_ends.shape, dtype=bool)
        self.indices = create_indices(
            episode_ends,
            sequence_length=sequence_length,
            episode_mask=episode_mask,
            pad_before=pad_before,
            pad_after=pad_after,
        )
        # a plain list: OmegaConf ListConfig makes every lookup slow
        self.keys = list(replay_buffer.keys()) if keys is None else list(keys)
        self.key_first_k = dict(key_first_k or {})
        self.key_first_steps = dict(key_first_steps or {})
        for key, k in self.key_first_steps.items():
            if not 1 <= k <= sequence_length:
                raise ValueError(
                    f"key_first_steps[{key!r}]={k} must be between 1 and sequence_length="
                    f"{sequence_length}."
                )
        self.sequence_length = sequence_length
        self.replay_buffer = replay_buffer

    def __len__(self) -> int:
        return len(self.indices)

    def sample_sequence(self, idx: int) -> dict[str, np.ndarray]:
        """Window ``idx``: every key's ``(sequence_length, ...)`` array."""
        return {key: value[0] for key, value in self.sample_sequences([idx]).items()}

    def sample_sequences(self, idxs: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Windows ``idxs`` at once: every key's ``(B, sequence_length, ...)`` array.

        Equal to stacking :meth:`sample_sequence` results, in one gather per key.
        """
        buffer_start, buffer_end, sample_start, _ = self.indices[np.asarray(idxs)].T
        n_data = buffer_end - buffer_start
        # offset of each output step into the window's data; clipping repeats the first frame
        # before sample_start and the last one after sample_end, which is upstream's padding
        t = np.arange(self.sequence_length)
        offset = np.clip(t - sample_start[:, None], 0, n_data[:, None] - 1)
        rows = buffer_start[:, None] + offset
        result = {}
        for key in self.keys:
            array = self.replay_buffer[key]
            if key in self.key_first_steps:
                result[key] = _take_rows(array, rows[:, : self.key_first_steps[key]])
                continue
            if key not in self.key_first_k:
                result[key] = _take_rows(array, rows)
                continue
            loaded = offset < np.minimum(self.key_first_k[key], n_data)[:, None]
            out = np.full(rows.shape + array.shape[1:], np.nan, dtype=array.dtype)
            out[loaded] = _take_rows(array, rows[loaded])
            result[key] = out
        return result


def _take_rows(array, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` for a numpy array, or for a zarr array (read each needed row once)."""
    if isinstance(array, np.ndarray):
        return array[rows]
    unique, inverse = np.unique(rows, return_inverse=True)
    return array.get_orthogonal_selection(unique)[inverse.reshape(rows.shape)]
