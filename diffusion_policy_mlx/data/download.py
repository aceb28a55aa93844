"""Fetch a published dataset, verify it, and put it in place atomically.

The archive is downloaded into a temporary folder next to the target, unpacked there, verified
array by array against :mod:`.registry`'s digests, and only then renamed into place; an
interruption or a bad file at any point leaves no dataset behind, and an existing one untouched.
"""

import hashlib
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from diffusion_policy_mlx.common.data_checks import DataError
from diffusion_policy_mlx.common.zarr_checks import DECODE_ERRORS
from diffusion_policy_mlx.data.registry import DATASETS, RemoteDataset

DOWNLOAD_BLOCK_BYTES = 1 << 20
# rows hashed at a time: bounds memory for the 2.8 GB image array
HASH_BLOCK_BYTES = 64 << 20


def get_spec(name: str) -> RemoteDataset:
    """The registry entry called ``name``, or an error listing the known ones."""
    if name not in DATASETS:
        raise KeyError(f"Unknown dataset {name!r}; known datasets: {sorted(DATASETS)}.")
    return DATASETS[name]


def download(
    dataset: str | RemoteDataset,
    root: str | Path = "data",
    url: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Fetch ``dataset`` (a registry name or entry) into ``root`` and return the zarr's path.

    ``url`` overrides the published address (a mirror, or a local server in tests). A dataset
    already in place is kept unless ``force``, which replaces it once the new copy is verified.
    """
    spec = get_spec(dataset) if isinstance(dataset, str) else dataset
    target = Path(root).expanduser() / spec.path
    if target.exists() and not force:
        print(f"{spec.name} is already at {target} (pass --force to fetch it again).")
        return target
    url = url or spec.url
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.download-"))
    try:
        archive = work / "archive.zip"
        fetch_url(url, archive, progress=progress)
        unpacked = work / "unpacked"
        unpack(archive, unpacked, url=url)
        archive.unlink()
        found = find_zarr(unpacked, target.name, url=url)
        verify(found, spec, progress=progress)
        if target.exists():
            target.rename(work / "replaced")
        found.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{spec.name} is ready at {target}.")
    return target


def fetch_url(url: str, dest: Path, progress: bool = True) -> None:
    """Stream ``url`` into ``dest`` with a progress bar; a short or failed transfer raises."""
    try:
        response = urllib.request.urlopen(url, timeout=60)
    except urllib.error.URLError as e:
        raise ConnectionError(
            f"Could not download {url}: {e.reason}. Check the network, or pass --url with a mirror."
        ) from e
    with response, dest.open("wb") as f:
        length = response.headers.get("Content-Length")
        total = int(length) if length is not None else None
        received = 0
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"download {Path(url).name}",
            disable=not progress,
        ) as bar:
            while block := response.read(DOWNLOAD_BLOCK_BYTES):
                f.write(block)
                received += len(block)
                bar.update(len(block))
    if total is not None and received != total:
        raise ConnectionError(
            f"Download of {url} stopped after {received} of {total} bytes; run the command again."
        )


def unpack(archive: Path, dest: Path, url: str) -> None:
    """Extract a zip archive into ``dest``."""
    if not zipfile.is_zipfile(archive):
        raise ValueError(f"{url} did not return a zip archive; check the URL.")
    with zipfile.ZipFile(archive) as z:
        z.extractall(dest)


def find_zarr(folder: Path, name: str, url: str) -> Path:
    """The unpacked zarr directory called ``name``, wherever the archive put it."""
    matches = sorted(p for p in folder.rglob(name) if p.is_dir())
    if not matches:
        raise ValueError(f"The archive from {url} holds no {name}; check the URL.")
    return matches[0]


def array_sha256(array: zarr.Array | np.ndarray) -> str:
    """sha256 of an array's raw C-order bytes, read a block of rows at a time."""
    digest = hashlib.sha256()
    if array.ndim == 0:
        digest.update(np.ascontiguousarray(array[...]).tobytes())
        return digest.hexdigest()
    row_bytes = array.dtype.itemsize * int(np.prod(array.shape[1:]))
    step = max(1, HASH_BLOCK_BYTES // max(row_bytes, 1))
    for start in range(0, array.shape[0], step):
        digest.update(np.ascontiguousarray(array[start : start + step]).data)
    return digest.hexdigest()


def verify(
    zarr_path: Path,
    spec: RemoteDataset,
    progress: bool = True,
    loaded: Mapping[str, np.ndarray] | None = None,
    remedy: str = "",
) -> None:
    """Check every array ``spec`` records against the zarr at ``zarr_path``; the first mismatch
    raises an error naming the array and both values, followed by ``remedy``.

    ``loaded`` maps array paths (``'data/img'``) to copies already in memory, hashed instead of
    being read again.
    """
    loaded = loaded or {}
    group = zarr.open_group(str(zarr_path), mode="r")
    for name, expected in tqdm(
        spec.arrays.items(), desc=f"verify {spec.name}", unit="array", disable=not progress
    ):
        if name in loaded:
            array = loaded[name]
        elif name in group:
            array = group[name]
        else:
            raise DataError(f"{zarr_path} lacks array {name}; the download is incomplete.{remedy}")
        if tuple(array.shape) != expected.shape or str(array.dtype) != expected.dtype:
            raise DataError(
                f"{zarr_path}: {name} is {tuple(array.shape)} {array.dtype}, expected "
                f"{expected.shape} {expected.dtype}.{remedy}"
            )
        try:
            sha = array_sha256(array)
        except DECODE_ERRORS as e:
            raise DataError(
                f"{zarr_path}: {name} cannot be decoded ({type(e).__name__}: {e}); the file is "
                f"damaged.{remedy}"
            ) from e
        if sha != expected.sha256:
            raise DataError(
                f"{zarr_path}: {name} has sha256 {sha}, expected {expected.sha256}; the file is "
                f"corrupt or not the published dataset.{remedy}"
            )
