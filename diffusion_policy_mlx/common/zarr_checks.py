"""Reading a zarr store on disk so that damage is reported instead of read.

zarr fills a chunk whose file is missing with the array's fill value, so a lost chunk file
reads as zeros; Blosc copies a truncated chunk that was stored uncompressed from past its end;
a damaged chunk or metadata file ends in a codec or JSON error that names no array. The
helpers here check that every chunk file is present and whole before reading, and turn every
decoding error into one :class:`DataError` that names the store, the array and the file.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec

from diffusion_policy_mlx.common.data_checks import DataError

# What zarr raises for metadata that does not parse: bad JSON or text encoding, an unknown codec
# or dtype (ValueError), a field of the wrong type (TypeError), a missing field or file (KeyError).
METADATA_ERRORS = (ValueError, TypeError, KeyError)
# What codecs raise for a damaged chunk: Blosc and zstd report RuntimeError, others ValueError.
DECODE_ERRORS = (ValueError, TypeError, RuntimeError)
# A Blosc frame starts with a 16-byte header whose bytes 12..16 hold the frame's total size.
BLOSC_HEADER_BYTES = 16


def metadata_file(node_dir: Path, zarr_format: int, kind: str = "array") -> Path:
    """The file holding a node's metadata: ``.zarray``/``.zgroup`` (format 2) or ``zarr.json``."""
    if zarr_format == 3:
        return node_dir / "zarr.json"
    return node_dir / (".zarray" if kind == "array" else ".zgroup")


def open_store(path: Path, source: str) -> zarr.Group:
    """The root group of the store at ``path``, read only; damaged root metadata is named."""
    try:
        return zarr.open_group(str(path), mode="r")
    except METADATA_ERRORS as e:
        raise DataError(
            f"Replay buffer {source}: the root metadata ({path / '.zgroup'} or "
            f"{path / 'zarr.json'}) is damaged ({type(e).__name__}: {e}). Re-fetch the store."
        ) from e


def open_member(group: zarr.Group, name: str, store_dir: Path, source: str, kind: str):
    """``group[name]``, whose folder exists and which must be a ``kind`` (``'array'`` or
    ``'group'``); damaged or missing metadata is named by its file."""
    node_dir = store_dir / name
    meta = metadata_file(node_dir, group.metadata.zarr_format, kind)
    try:
        node = group[name]
    except METADATA_ERRORS as e:
        state = "is damaged" if meta.is_file() else "is missing"
        raise DataError(
            f"Replay buffer {source}: the metadata of {name} ({meta}) {state} "
            f"({type(e).__name__}: {e}). Re-fetch or rewrite the store."
        ) from e
    expected = zarr.Array if kind == "array" else zarr.Group
    if not isinstance(node, expected):
        raise DataError(
            f"Replay buffer {source}: {name} is not a zarr {kind}; its metadata ({meta}) is "
            "missing or damaged. Re-fetch or rewrite the store."
        )
    return node


def member_names(store_dir: Path, group: str) -> list[str]:
    """The names of the nodes inside ``group`` (``'data'``), read from the folder so that one
    damaged member's metadata cannot hide the others."""
    return sorted(p.name for p in (store_dir / group).iterdir() if p.is_dir())


def read_array(array: zarr.Array, name: str, store_dir: Path, source: str) -> np.ndarray:
    """All of ``array`` (the store's ``name``, e.g. ``'data/img'``) as numpy, after checking
    that every chunk file is present and, for Blosc, whole; a chunk that does not decode is
    named with its file."""
    array_dir = store_dir / name
    chunk_files = expected_chunk_files(array, array_dir)
    for coords, file in chunk_files.items():
        if not file.is_file():
            raise DataError(
                f"Replay buffer {source}: chunk {'.'.join(map(str, coords))} of {name} "
                f"({_rows(array, coords)}) is missing: {file} does not exist, and zarr would "
                "read it as zeros. Re-fetch or re-record the store. (zarr 3 leaves out chunks "
                "equal to the fill value unless written with write_empty_chunks=True.)"
            )
    if _blosc_framed(array):
        for coords, file in chunk_files.items():
            _check_blosc_frame(file, f"chunk {'.'.join(map(str, coords))} of {name}", source)
    try:
        return array[...]
    except DECODE_ERRORS as e:
        coords = _first_bad_chunk(array)
        where = "" if coords is None else f" in chunk {'.'.join(map(str, coords))}"
        file = "" if coords not in chunk_files else f" ({chunk_files[coords]})"
        raise DataError(
            f"Replay buffer {source}: {name} cannot be decoded{where}{file}: "
            f"{type(e).__name__}: {e}. The file is damaged; re-fetch or re-record the store."
        ) from e


def expected_chunk_files(array: zarr.Array, array_dir: Path) -> dict[tuple[int, ...], Path]:
    """The file every stored object of ``array`` must have (shards where sharded), by grid
    coordinates."""
    if array.size == 0:
        return {}
    per_file = array.shards or array.chunks
    grid = [math.ceil(s / c) for s, c in zip(array.shape, per_file, strict=True)]
    return {
        coords: array_dir / array.metadata.encode_chunk_key(coords)
        for coords in itertools.product(*(range(n) for n in grid))
    }


def _rows(array: zarr.Array, coords: tuple[int, ...]) -> str:
    if not coords:
        return "the whole array"
    per_file = (array.shards or array.chunks)[0]
    start = coords[0] * per_file
    return f"rows {start}..{min(start + per_file, array.shape[0]) - 1}"


def _blosc_framed(array: zarr.Array) -> bool:
    """Whether every chunk file of ``array`` is exactly one Blosc frame."""
    compressors = array.compressors
    return (
        array.shards is None
        and len(compressors) == 1
        and isinstance(compressors[0], numcodecs.Blosc | BloscCodec)
    )


def _check_blosc_frame(file: Path, what: str, source: str) -> None:
    """Refuse a Blosc chunk file whose size differs from the size its header records (a
    truncated file, which Blosc would otherwise decode from past its end)."""
    size = file.stat().st_size
    with file.open("rb") as f:
        header = f.read(BLOSC_HEADER_BYTES)
    if len(header) < BLOSC_HEADER_BYTES:
        problem = f"the file holds {size} bytes, less than a Blosc header"
    elif (recorded := int.from_bytes(header[12:16], "little")) != size:
        problem = f"the file holds {size} bytes but its Blosc header records {recorded}"
    else:
        return
    raise DataError(
        f"Replay buffer {source}: {what} ({file}) is damaged: {problem}. Re-fetch or re-record "
        "the store."
    )


def _first_bad_chunk(array: zarr.Array) -> tuple[int, ...] | None:
    """The grid coordinates of the first chunk of ``array`` that does not decode."""
    grid = [math.ceil(s / c) for s, c in zip(array.shape, array.chunks, strict=True)]
    for coords in itertools.product(*(range(n) for n in grid)):
        try:
            array.get_block_selection(coords)
        except DECODE_ERRORS:
            return coords
    return None
