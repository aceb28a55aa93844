"""Episodes of time-major arrays in upstream's zarr layout.

A replay buffer is a group with two children: ``data/<key>``, one array per key whose first axis is
time (all keys share it), and ``meta/episode_ends``, the int64 exclusive end step of every episode.
This is the layout upstream's demonstration files use (``pusht_cchi_v7_replay.zarr``, written by
zarr 2 in zarr format 2); zarr 3 reads it and :meth:`ReplayBuffer.save_to_path` writes it back in
the same format, so upstream tools can read what this package records.

Two backends, as upstream: ``numpy`` (plain dicts of in-memory arrays, what training uses) and
``zarr`` (arrays opened on disk, for recording demonstrations episode by episode).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import ItemsView, KeysView, ValuesView
from pathlib import Path
from typing import Literal

import numcodecs
import numpy as np
import zarr
from numcodecs.abc import Codec

from diffusion_policy_mlx.common import zarr_checks
from diffusion_policy_mlx.common.data_checks import check_episode_ends, check_finite

ArrayLike = np.ndarray | zarr.Array
NumpyRoot = dict[str, dict[str, np.ndarray]]
Compressor = Codec | Literal["default", "disk"] | None
Compressors = Compressor | dict[str, Compressor]
Chunks = tuple[int, ...] | dict[str, tuple[int, ...]] | None

# A chunk of about this many bytes keeps per-chunk overhead small and random access cheap.
TARGET_CHUNK_BYTES = 2 * 1024 * 1024
# zarr 3 leaves out a chunk equal to the fill value; the reader refuses a missing chunk as
# damage (zarr would read a lost file as zeros), so every chunk is written.
WRITE_EVERY_CHUNK = {"write_empty_chunks": True}


def resolve_compressor(compressor: Compressor = "default") -> Codec | None:
    """Upstream's compressor names: ``'default'`` is fast LZ4, ``'disk'`` small zstd."""
    if compressor == "default":
        return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
    if compressor == "disk":
        return numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
    return compressor


def default_chunks(shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    """Chunk along time only, about :data:`TARGET_CHUNK_BYTES` per chunk, whole frames inside."""
    row_bytes = np.dtype(dtype).itemsize * math.prod(shape[1:])
    return (max(1, TARGET_CHUNK_BYTES // max(row_bytes, 1)), *shape[1:])


def _pick(option: Chunks | Compressors, key: str) -> object:
    """A per-key option: a dict gives each key its own value, anything else applies to all."""
    if isinstance(option, dict):
        return option.get(key)
    return option


def _existing_store(zarr_path: str | Path) -> Path:
    path = Path(zarr_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"Replay buffer {str(zarr_path)!r} does not exist ({path.resolve()})."
        )
    return path


def _open_group(zarr_path: str | Path, mode: str) -> zarr.Group:
    path = _existing_store(zarr_path) if mode == "r" else Path(zarr_path).expanduser()
    # new stores get upstream's zarr format 2; existing ones keep theirs
    creating = mode in ("w", "w-") or not path.exists()
    return zarr.open_group(str(path), mode=mode, zarr_format=2 if creating else None)


class ReplayBuffer:
    """Episodes stored back to back along the time axis of every ``data`` array.

    Build one with :meth:`copy_from_path` (load a zarr into memory), :meth:`create_from_path`
    (open a zarr on disk, created if missing in modes ``'a'``/``'w'``) or
    :meth:`create_empty_numpy`. ``buffer[key]`` is the ``(n_steps, ...)`` array of ``key``.
    """

    def __init__(self, root: zarr.Group | NumpyRoot, source: str = "<memory>"):
        """Wrap ``root`` (a zarr group or ``{'data': {...}, 'meta': {...}}``) after checking it.

        ``source`` names the store in error messages.
        """
        for child in ("data", "meta"):
            if child not in root:
                raise KeyError(
                    f"Replay buffer {source} has no '{child}' group; expected upstream's layout "
                    "'data/<key>' arrays and 'meta/episode_ends'."
                )
        if "episode_ends" not in root["meta"]:
            raise KeyError(f"Replay buffer {source} has no 'meta/episode_ends' array.")
        self.root = root
        self.source = source
        n_rows = {key: value.shape[0] for key, value in self.items()}
        check_episode_ends(self.episode_ends, n_rows, source)

    # ----------------------------------------------------------------------------- constructors
    @classmethod
    def create_empty_numpy(cls) -> ReplayBuffer:
        """An empty in-memory buffer to fill with :meth:`add_episode`."""
        return cls({"data": {}, "meta": {"episode_ends": np.zeros((0,), dtype=np.int64)}})

    @classmethod
    def create_from_path(cls, zarr_path: str | Path, mode: str = "r") -> ReplayBuffer:
        """Open a zarr on disk without loading it (``zarr`` backend).

        ``mode`` is zarr's: ``'r'`` read only, ``'a'`` read/write and create if missing, ``'w'``
        start a new empty store (zarr format 2, upstream's). Writes go straight to disk.
        """
        group = _open_group(zarr_path, mode)
        if mode != "r" and "data" not in group:
            group.require_group("data")
            meta = group.require_group("meta")
            meta.create_array(
                "episode_ends",
                shape=(0,),
                chunks=(1024,),
                dtype=np.int64,
                compressors=None,
                config=WRITE_EVERY_CHUNK,
            )
        return cls(group, source=repr(str(zarr_path)))

    @classmethod
    def copy_from_path(
        cls, zarr_path: str | Path, keys: list[str] | tuple[str, ...] | None = None
    ) -> ReplayBuffer:
        """Load a zarr's ``meta`` arrays and the ``data`` arrays named in ``keys`` (all when
        ``None``) into memory (``numpy`` backend), checking them on the way.

        Refused, each with an error naming the array: a missing, truncated or undecodable chunk
        file, damaged metadata, arrays whose lengths disagree with ``meta/episode_ends`` or
        episode ends that do not increase, and NaN or Inf in a floating-point array.
        """
        path = _existing_store(zarr_path)
        source = repr(str(zarr_path))
        group = zarr_checks.open_store(path, source)
        for child in ("data", "meta"):
            if not (path / child).is_dir():
                raise KeyError(
                    f"Replay buffer {source} has no '{child}' group; expected upstream's layout "
                    "'data/<key>' arrays and 'meta/episode_ends'."
                )
            zarr_checks.open_member(group, child, path, source, "group")
        available = zarr_checks.member_names(path, "data")
        keys = available if keys is None else list(keys)
        missing = [k for k in keys if k not in available]
        if missing:
            raise KeyError(
                f"Replay buffer {source} has no array data/{missing[0]}; it holds {available}. "
                "Check the dataset's key arguments or re-fetch the file."
            )

        def read(name: str) -> np.ndarray:
            array = zarr_checks.open_member(group, name, path, source, "array")
            return zarr_checks.read_array(array, name, path, source)

        meta = {name: read(f"meta/{name}") for name in zarr_checks.member_names(path, "meta")}
        data = {key: read(f"data/{key}") for key in keys}
        buffer = cls({"data": data, "meta": meta}, source=source)
        for key, value in data.items():
            check_finite(key, value, buffer.episode_ends, source)
        return buffer

    # ----------------------------------------------------------------------------- saving
    def save_to_path(
        self, zarr_path: str | Path, chunks: Chunks = None, compressors: Compressors = "default"
    ) -> Path:
        """Write the buffer as a new zarr (format 2, upstream's layout) and return its path.

        ``chunks``/``compressors`` apply to every key or, as dicts, per key; unset keys get
        :func:`default_chunks` and upstream's ``'default'`` compressor. The store is written next
        to ``zarr_path`` and renamed into place, so an existing store is replaced whole or not at
        all.
        """
        path = Path(zarr_path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        try:
            root = zarr.open_group(str(tmp / "store"), mode="w", zarr_format=2)
            meta = root.require_group("meta")
            for name, value in self.meta.items():
                value = np.asarray(value[...])
                chunks_meta = tuple(max(1, n) for n in value.shape)
                meta.create_array(
                    name,
                    data=value,
                    chunks=chunks_meta,
                    compressors=None,
                    config=WRITE_EVERY_CHUNK,
                )
            data = root.require_group("data")
            for key, value in self.items():
                cks = _pick(chunks, key) or default_chunks(value.shape, value.dtype)
                cpr = resolve_compressor(_pick(compressors, key) or "default")
                arr = data.create_array(
                    key,
                    shape=value.shape,
                    chunks=cks,
                    dtype=value.dtype,
                    compressors=cpr,
                    fill_value=0,
                    config=WRITE_EVERY_CHUNK,
                )
                arr[...] = value[...]
            if path.exists():
                path.rename(tmp / "replaced")
            (tmp / "store").rename(path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    # ----------------------------------------------------------------------------- properties
    @property
    def backend(self) -> Literal["numpy", "zarr"]:
        """``'zarr'`` for a buffer opened on disk, ``'numpy'`` for one in memory."""
        return "zarr" if isinstance(self.root, zarr.Group) else "numpy"

    @property
    def data(self) -> zarr.Group | dict[str, np.ndarray]:
        return self.root["data"]

    @property
    def meta(self) -> zarr.Group | dict[str, np.ndarray]:
        return self.root["meta"]

    @property
    def episode_ends(self) -> np.ndarray:
        """``(n_episodes,)`` int64: the exclusive end step of each episode."""
        return np.asarray(self.meta["episode_ends"][...])

    @property
    def n_episodes(self) -> int:
        return int(self.meta["episode_ends"].shape[0])

    @property
    def n_steps(self) -> int:
        ends = self.episode_ends
        return int(ends[-1]) if len(ends) else 0

    @property
    def episode_lengths(self) -> np.ndarray:
        """``(n_episodes,)`` int64 step counts."""
        return np.diff(self.episode_ends, prepend=0)

    def get_episode_idxs(self) -> np.ndarray:
        """``(n_steps,)`` int64: the episode each step belongs to."""
        return np.repeat(np.arange(self.n_episodes), self.episode_lengths)

    # ----------------------------------------------------------------------------- dict-like
    def keys(self) -> KeysView[str]:
        return dict(self._arrays()).keys()

    def values(self) -> ValuesView[ArrayLike]:
        return dict(self._arrays()).values()

    def items(self) -> ItemsView[str, ArrayLike]:
        return dict(self._arrays()).items()

    def _arrays(self):
        return self.data.arrays() if self.backend == "zarr" else self.data.items()

    def __getitem__(self, key: str) -> ArrayLike:
        return self.data[key]

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in self.items())
        return (
            f"ReplayBuffer({self.source}, backend={self.backend}, "
            f"n_episodes={self.n_episodes}, n_steps={self.n_steps}, data={{{fields}}})"
        )

    # ----------------------------------------------------------------------------- episodes
    def get_episode_slice(self, idx: int) -> slice:
        """The steps of episode ``idx`` (negative counts from the end)."""
        ends = self.episode_ends
        idx = range(len(ends))[idx]
        start = int(ends[idx - 1]) if idx > 0 else 0
        return slice(start, int(ends[idx]))

    def get_steps_slice(
        self, start: int, stop: int, step: int | None = None, copy: bool = False
    ) -> dict[str, np.ndarray]:
        """Every key's rows ``start:stop:step``; views of the numpy backend unless ``copy``."""
        sl = slice(start, stop, step)
        result = {}
        for key, value in self.items():
            rows = value[sl]
            result[key] = rows.copy() if copy and isinstance(value, np.ndarray) else rows
        return result

    def get_episode(self, idx: int, copy: bool = False) -> dict[str, np.ndarray]:
        """Every key's ``(episode_length, ...)`` rows of episode ``idx``."""
        sl = self.get_episode_slice(idx)
        return self.get_steps_slice(sl.start, sl.stop, copy=copy)

    def add_episode(
        self,
        data: dict[str, np.ndarray],
        chunks: Chunks = None,
        compressors: Compressors = "default",
    ) -> None:
        """Append one episode: ``data[key]`` is ``(episode_length, ...)`` for every key.

        The first episode fixes the keys; later episodes must bring the same keys with the same
        per-step shapes. ``chunks``/``compressors`` are used when the zarr backend creates an array.
        """
        if not data:
            raise ValueError("add_episode needs at least one key.")
        lengths = {key: len(value) for key, value in data.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"add_episode: keys disagree on the episode length: {lengths}.")
        if self.n_episodes and set(data) != set(self.keys()):
            raise KeyError(
                f"add_episode got keys {sorted(data)} but the buffer holds {sorted(self.keys())}."
            )
        n_new = next(iter(lengths.values()))
        new_len = self.n_steps + n_new
        for key, value in data.items():
            value = np.asarray(value)
            if key in self.data:
                arr = self.data[key]
                if value.shape[1:] != arr.shape[1:]:
                    raise ValueError(
                        f"add_episode: '{key}' has per-step shape {value.shape[1:]} but the "
                        f"buffer stores {arr.shape[1:]}."
                    )
                if self.backend == "zarr":
                    arr.resize((new_len, *arr.shape[1:]))
                    arr.with_config(WRITE_EVERY_CHUNK)[new_len - n_new :] = value
                else:
                    self.data[key] = np.concatenate([arr, value.astype(arr.dtype)])
            elif self.backend == "zarr":
                arr = self.data.create_array(
                    key,
                    shape=(new_len, *value.shape[1:]),
                    chunks=_pick(chunks, key) or default_chunks(value.shape, value.dtype),
                    dtype=value.dtype,
                    compressors=resolve_compressor(_pick(compressors, key) or "default"),
                    fill_value=0,
                    config=WRITE_EVERY_CHUNK,
                )
                arr[new_len - n_new :] = value
            else:
                self.data[key] = value.copy()
        self._set_episode_ends(np.append(self.episode_ends, np.int64(new_len)))

    def drop_episode(self) -> None:
        """Remove the last episode."""
        if self.n_episodes == 0:
            raise IndexError("drop_episode on an empty replay buffer.")
        ends = self.episode_ends[:-1]
        new_len = int(ends[-1]) if len(ends) else 0
        for key, value in self.items():
            if self.backend == "zarr":
                value.resize((new_len, *value.shape[1:]))
            else:
                self.data[key] = value[:new_len]
        self._set_episode_ends(ends)

    def pop_episode(self) -> dict[str, np.ndarray]:
        """Remove the last episode and return a copy of it."""
        if self.n_episodes == 0:
            raise IndexError("pop_episode on an empty replay buffer.")
        episode = self.get_episode(-1, copy=True)
        self.drop_episode()
        return episode

    def _set_episode_ends(self, ends: np.ndarray) -> None:
        ends = ends.astype(np.int64)
        if self.backend == "zarr":
            arr = self.meta["episode_ends"]
            arr.resize(ends.shape)
            arr.with_config(WRITE_EVERY_CHUNK)[...] = ends
        else:
            self.meta["episode_ends"] = ends
