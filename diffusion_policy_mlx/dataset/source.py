"""Opening the replay buffer a dataset trains on: found, loaded, checked, before any step."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from diffusion_policy_mlx.common.replay_buffer import ReplayBuffer
from diffusion_policy_mlx.data.registry import dataset_for_path, require_dataset
from diffusion_policy_mlx.data.verified import verify_once


def load_replay_buffer(zarr_path: str | Path, keys: Sequence[str]) -> ReplayBuffer:
    """The arrays ``keys`` of the zarr at ``zarr_path`` (and its ``meta``), in memory.

    A missing store names the command that fetches it; a damaged or inconsistent one is refused
    by :meth:`ReplayBuffer.copy_from_path`, naming the array and row. A store at a published
    dataset's path (``data/pusht/pusht_cchi_v7_replay.zarr``) must also match the registry's
    digests, checked once per copy of its files (:func:`~diffusion_policy_mlx.data.verified.
    verify_once`); the loaded arrays are hashed in memory rather than read again.
    """
    path = require_dataset(zarr_path)
    buffer = ReplayBuffer.copy_from_path(path, keys=keys)
    match = dataset_for_path(path)
    if match is not None:
        spec, root = match
        loaded = {f"data/{key}": buffer[key] for key in keys}
        loaded["meta/episode_ends"] = buffer.episode_ends
        remedy = (
            f" Fetch a fresh copy with `{spec.download_command(root)} --force`; data of your "
            f"own belongs at another path (this one is the published {spec.name} dataset's)."
        )
        verify_once(path, spec, loaded=loaded, remedy=remedy)
    return buffer
