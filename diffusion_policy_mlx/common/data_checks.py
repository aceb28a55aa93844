"""Checks on the contents of a replay buffer's arrays, run when the buffer is opened.

Each check raises one :class:`DataError` that names the store, the array and the first bad
index or value, so that bad data stops a run before its first step instead of training on
NaN, on windows that cross episodes, or on images scaled twice.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# rows scanned at a time when looking for the first bad row: bounds the temporary mask
SCAN_BLOCK_BYTES = 64 << 20


class DataError(ValueError):
    """A data file is damaged or inconsistent; the message names the file, array and row."""


def check_episode_ends(ends: np.ndarray, n_rows: Mapping[str, int], source: str) -> None:
    """Raise unless ``ends`` (``meta/episode_ends``) is a 1-D integer array, strictly increasing
    from a positive first value, and ends exactly at the row count of every ``data`` array
    (``n_rows``: key -> number of rows)."""
    where = f"Replay buffer {source}: meta/episode_ends"
    if ends.ndim != 1 or not np.issubdtype(ends.dtype, np.integer):
        raise DataError(f"{where} must be a 1-D integer array; it is {ends.shape} {ends.dtype}.")
    if len(ends) == 0:
        for key, n in n_rows.items():
            if n:
                raise DataError(f"{where} is empty but data/{key} holds {n} rows.")
        return
    steps = np.diff(ends, prepend=0)
    bad = np.flatnonzero(steps <= 0)
    if len(bad):
        i = int(bad[0])
        before = f"episode_ends[{i - 1}]={int(ends[i - 1])}" if i else "0"
        raise DataError(
            f"{where} must be strictly increasing from a positive value, but "
            f"episode_ends[{i}]={int(ends[i])} follows {before} (episode {i} would hold "
            f"{int(steps[i])} steps). Rebuild the store's episode index."
        )
    for key, n in n_rows.items():
        if n != int(ends[-1]):
            raise DataError(
                f"Replay buffer {source}: 'data/{key}' has {n} steps but meta/episode_ends ends "
                f"at {int(ends[-1])}; every array must hold exactly the steps of its episodes."
            )


def check_finite(key: str, array: np.ndarray, ends: np.ndarray, source: str) -> None:
    """Raise if a floating-point ``array`` (``(N, ...)``, the data of ``key``) holds NaN or
    Inf; the error names the first bad row and its episode (``ends``: ``meta/episode_ends``)."""
    if not np.issubdtype(array.dtype, np.floating) or array.size == 0:
        return
    # min and max propagate NaN and expose +-Inf: two passes, no temporary the size of the data
    if np.isfinite(array.min()) and np.isfinite(array.max()):
        return
    row = first_bad_row(array)
    episode = int(np.searchsorted(ends, row, side="right"))
    start = int(ends[episode - 1]) if episode else 0
    values = array[row].ravel()
    value = values[~np.isfinite(values)][0]
    raise DataError(
        f"Replay buffer {source}: data/{key} holds {value} at row {row} (episode {episode}, "
        f"step {row - start}); every value must be finite. Fix or drop that episode."
    )


def first_bad_row(array: np.ndarray) -> int:
    """The index of the first row of ``array`` with a non-finite value (there must be one)."""
    row_bytes = max(array[:1].nbytes, 1)
    step = max(1, SCAN_BLOCK_BYTES // row_bytes)
    for start in range(0, len(array), step):
        block = array[start : start + step].reshape(min(step, len(array) - start), -1)
        bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if len(bad):
            return start + int(bad[0])
    raise ValueError("first_bad_row: every value is finite")


def image_scale(array: np.ndarray, key: str, source: str) -> float:
    """What to divide the images of ``key`` by to bring them to ``[0, 1]``.

    The rule: ``uint8`` images are 0..255 (divide by 255); floating-point images whose values
    all lie in ``[0, 1]`` are already scaled (divide by 1), and those with values in
    ``(1, 255]`` are 0..255 like upstream's PushT file (divide by 255). Any other integer type,
    a negative value or one above 255 is refused. A float 0..255 store with no value above 1
    (an all-black recording) would read as ``[0, 1]``: store such images as ``uint8``.
    """
    if array.dtype == np.uint8:
        return 255.0
    where = f"Replay buffer {source}: data/{key}"
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(
            f"{where} has dtype {array.dtype}; images must be uint8 (0..255) or floating point "
            "(0..1 or 0..255). Convert the array when writing the store."
        )
    if array.size == 0:
        return 255.0
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 255:
        raise DataError(
            f"{where} holds values from {low} to {high}; float images must lie in [0, 1] or "
            "[0, 255]. Rescale the array when writing the store."
        )
    return 1.0 if high <= 1 else 255.0
