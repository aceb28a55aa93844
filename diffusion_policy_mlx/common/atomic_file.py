"""Files that are either wholly written or not there: a temporary file, then a rename.

A crash, a full disk or a read-only folder mid-write leaves the previous file at the target
path untouched and no partial file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: Path, tmp: Path) -> Iterator[BinaryIO]:
    """Yield ``tmp`` open for writing; when the block ends, flush it to disk and rename it to
    ``path``. If anything fails (an ``OSError`` such as ``ENOSPC``, an interrupt), ``tmp`` is
    removed, ``path`` is as it was, and the exception propagates."""
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and write (then remove) a file in it: raises the
    ``OSError`` a later write would meet. A real write, because permission bits say nothing
    for root or for a read-only mount."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder) as f:
        f.write(b"\0")
        f.flush()
