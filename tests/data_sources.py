"""Where the tests find the PushT data: ``data/pusht/`` once it holds the published arrays, else
a shared folder's copy."""

import hashlib
from pathlib import Path
from typing import Protocol

from diffusion_policy_mlx.data.download import verify
from diffusion_policy_mlx.data.registry import DATASETS

PUSHT = DATASETS["pusht"]
VERIFIED_CACHE_KEY = "diffusion_policy_mlx/verified_pusht"


class Cache(Protocol):
    """What is used of ``pytest.Cache``."""

    def get(self, key: str, default): ...
    def set(self, key: str, value) -> None: ...


def fingerprint(folder: Path) -> str:
    """Names, sizes and modification times of every file under ``folder``."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def verification_problem(zarr_path: Path, cache: Cache | None) -> str | None:
    """None when ``zarr_path`` holds the published PushT arrays, else why not. Checking every
    digest takes seconds, so a pass is remembered in ``cache`` until a file under the zarr
    changes."""
    stamp = {"path": str(zarr_path), "fingerprint": fingerprint(zarr_path)}
    if cache is not None and cache.get(VERIFIED_CACHE_KEY, None) == stamp:
        return None
    try:
        verify(zarr_path, PUSHT, progress=False)
    except ValueError as error:
        return str(error)
    if cache is not None:
        cache.set(VERIFIED_CACHE_KEY, stamp)
    return None


def find_pusht(repo: Path, shared: Path, cache: Cache | None) -> Path:
    """``repo/data/pusht/...`` if verified, else ``shared/data/pusht/...`` if present; otherwise
    a LookupError whose message says how to get the data."""
    local = repo / "data" / PUSHT.path
    problem, command = "absent", PUSHT.download_command()
    if local.exists():
        problem = verification_problem(local, cache)
        if problem is None:
            return local
        command += " --force"
    if (shared / "data" / PUSHT.path).exists():
        return shared / "data" / PUSHT.path
    raise LookupError(f"needs the PushT data at {local} ({problem}): run `{command}` in {repo}")
