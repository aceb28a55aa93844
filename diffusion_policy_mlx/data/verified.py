"""Check a copy of a published dataset against the registry's digests once, not at every open.

Hashing PushT's arrays takes seconds; a successful check is remembered in
``$XDG_CACHE_HOME/diffusion_policy_mlx/verified/`` (``~/.cache/...`` without it), outside the
data folder, which may be read only. An entry is keyed by the store's resolved path and holds a
fingerprint of every file in it (relative path, size, modification time) and of the registry
entry: a file changed, added or removed, or new digests, and the check runs again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from diffusion_policy_mlx.common.cache_dir import cache_home
from diffusion_policy_mlx.data.download import verify
from diffusion_policy_mlx.data.registry import RemoteDataset

log = logging.getLogger(__name__)


def verified_dir() -> Path:
    """The folder of verification records."""
    return cache_home() / "verified"


def fingerprint(store: Path, spec: RemoteDataset) -> str:
    """sha256 over the registry entry and the path, size and mtime of every file in ``store``."""
    digest = hashlib.sha256(repr(sorted(spec.arrays.items())).encode())
    for folder, dirs, files in os.walk(store):
        dirs.sort()
        for name in sorted(files):
            file = Path(folder, name)
            stat = file.stat()
            rel = file.relative_to(store).as_posix()
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def verify_once(
    store: Path,
    spec: RemoteDataset,
    loaded: Mapping[str, np.ndarray] | None = None,
    remedy: str = "",
) -> bool:
    """Verify ``store`` against ``spec`` unless this copy already passed; returns whether it
    was checked now. ``loaded`` and ``remedy`` are :func:`~.download.verify`'s."""
    store = store.resolve()
    record = verified_dir() / f"{hashlib.sha256(str(store).encode()).hexdigest()}.json"
    expected = fingerprint(store, spec)
    if _recorded_fingerprint(record) == expected:
        return False
    log.info("verifying %s against the published %s digests (once per copy)", store, spec.name)
    verify(store, spec, progress=False, loaded=loaded, remedy=remedy)
    _write_record(record, {"path": str(store), "dataset": spec.name, "fingerprint": expected})
    return True


def _recorded_fingerprint(record: Path) -> str | None:
    """The fingerprint ``record`` holds; none where it is absent or damaged (checked again)."""
    if not record.is_file():
        return None
    try:
        content = json.loads(record.read_text())
    except ValueError:
        return None
    return content.get("fingerprint") if isinstance(content, dict) else None


def _write_record(record: Path, content: dict[str, str]) -> None:
    """Write ``record`` atomically; a cache that cannot be written costs a check next time."""
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=record.parent, prefix=f".{record.name}.", delete=False
        ) as f:
            json.dump(content, f)
        os.replace(f.name, record)
    except OSError as e:
        log.warning(
            "could not record the dataset check in %s (%s); it runs again next time",
            record.parent,
            e,
        )
