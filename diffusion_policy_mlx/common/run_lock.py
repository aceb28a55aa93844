"""One process per run folder: an exclusive ``flock`` on ``<run>/run.lock``.

Two training processes in one folder would interleave ``logs.json.txt`` and overwrite each
other's checkpoints. The lock is an ``fcntl.flock`` held for the whole run, so the kernel drops
it when the process ends, however it ends (``kill -9`` included): a dead run never blocks the
next. The file records who holds it (pid, host, start time) so that a refused process can name
the holder. Data-parallel ranks of one run take no lock of their own: only rank 0 writes to the
run folder, and only it holds the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = "run.lock"


class RunFolderInUseError(RuntimeError):
    """Another live process holds the run folder's lock."""


def _holder(lock_path: Path) -> str:
    """``'process PID on host HOST (started TIME)'`` from the lock file, as far as readable."""
    try:
        info = json.loads(lock_path.read_text())
    except (OSError, ValueError):
        # The holder may be between taking the lock and writing its record.
        return "another process"
    return f"process {info['pid']} on host {info['host']} (started {info['started']})"


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold the lock on ``run_dir`` (created if absent) for the ``with`` block.

    Raises :class:`RunFolderInUseError` naming the holder when another process has it.
    Yields the lock file's path.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_path = run_dir / LOCK_NAME
    # Never unlinked: deleting a flock'd file lets a third process lock a new inode while
    # a second still waits on the old one.
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderInUseError(
                f"run folder {run_dir} is in use by {_holder(lock_path)}: two processes in one "
                "folder would overwrite each other's logs and checkpoints. Wait for that run to "
                "end (or stop it), or give this run another folder (hydra.run.dir=...)."
            ) from None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        try:
            yield lock_path
        finally:
            # An ended run leaves an empty file: no stale pid to mislead a reader.
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)
