"""Datasets that ``python -m diffusion_policy_mlx.data download`` can fetch, and how to check them.

The archives upstream publishes carry no checksum of their own, so a download is verified by its
content: the shape, dtype and sha256 of the raw (C-order) bytes of every array in the unpacked
zarr, recorded here from upstream's file.
"""

from dataclasses import dataclass
from pathlib import Path

PACKAGE_COMMAND = "python -m diffusion_policy_mlx.data"


@dataclass(frozen=True)
class ArrayDigest:
    """What one array of a published zarr holds: ``(shape, dtype, sha256 of its bytes)``."""

    shape: tuple[int, ...]
    dtype: str
    sha256: str


@dataclass(frozen=True)
class RemoteDataset:
    """A published dataset: where to get it, where it goes under the data root, what it holds.

    ``path`` is relative to the data root (``data/`` by default), the same path upstream's task
    configs use after ``data/``; ``arrays`` maps array paths inside the zarr to their digests.
    """

    name: str
    url: str
    path: str
    arrays: dict[str, ArrayDigest]

    def download_command(self, root: Path = Path("data")) -> str:
        """The shell command that fetches this dataset into ``root``."""
        command = f"{PACKAGE_COMMAND} download {self.name}"
        return command if root == Path("data") else f"{command} --root {root}"

    def place_by_hand(self, root: Path = Path("data")) -> str:
        """How to put this dataset in place without the download command, in one sentence."""
        target = root / self.path
        verify = f"{PACKAGE_COMMAND} verify {self.name}"
        if root != Path("data"):
            verify += f" --root {root}"
        return (
            f"To place it by hand: fetch {self.url} elsewhere, unzip it, move its {target.name} "
            f"folder to {target.resolve()}, then check it with `{verify}`."
        )


DATASETS: dict[str, RemoteDataset] = {
    "pusht": RemoteDataset(
        name="pusht",
        url="https://diffusion-policy.cs.columbia.edu/data/training/pusht.zip",
        path="pusht/pusht_cchi_v7_replay.zarr",
        arrays={
            "data/action": ArrayDigest(
                (25650, 2),
                "float32",
                "6691b085749144b8db1aede97a80fb380afd08953fcd03660b441d0ffe9d6a8f",
            ),
            "data/img": ArrayDigest(
                (25650, 96, 96, 3),
                "float32",
                "3f7650895d1a500d7162b10475df689731f4fece2b15eaf7d913a560c2a0783d",
            ),
            "data/keypoint": ArrayDigest(
                (25650, 9, 2),
                "float32",
                "2419980734c1d41050f8fbf7513031e6e784168bafbe42bcec81fdebe44c6611",
            ),
            "data/n_contacts": ArrayDigest(
                (25650, 1),
                "float32",
                "3e4258a61c21da4af3257269d3300b5128f04ba3ad34ebd0d0e709489ca854d4",
            ),
            "data/state": ArrayDigest(
                (25650, 5),
                "float32",
                "dcdc539bfdba9fc01cba8d2fe91cc580539ec046a88b0ffbe91be5511948d4dc",
            ),
            "meta/episode_ends": ArrayDigest(
                (206,),
                "int64",
                "82db02e667c59a83fedb211ab9b84182591b75009df1385210d5235197f93d72",
            ),
        },
    ),
}


def dataset_for_path(zarr_path: str | Path) -> tuple[RemoteDataset, Path] | None:
    """The published dataset a path points at and the data root it implies, if any.

    ``data/pusht/pusht_cchi_v7_replay.zarr`` gives ``(DATASETS['pusht'], Path('data'))``.
    """
    path = Path(zarr_path).expanduser()
    for spec in DATASETS.values():
        parts = Path(spec.path).parts
        if path.parts[-len(parts) :] == parts:
            return spec, Path(*path.parts[: -len(parts)]) if len(path.parts) > len(
                parts
            ) else Path()
    return None


def require_dataset(zarr_path: str | Path) -> Path:
    """``zarr_path`` as a Path if it exists; otherwise one error that names the path expected and
    the command that fetches it (paths are relative to the working directory, like upstream)."""
    path = Path(zarr_path).expanduser()
    if path.exists():
        return path
    message = f"Dataset not found: {str(zarr_path)!r} (looked for {path.resolve()})."
    match = dataset_for_path(path)
    if match is not None:
        spec, root = match
        message += f" Fetch it with `{spec.download_command(root)}`"
        if not path.is_absolute():
            message += f" run from {Path.cwd()}, or point zarr_path at an existing copy"
        message += "."
    else:
        message += (
            " Point zarr_path at a zarr in upstream's layout (data/<key>, meta/episode_ends); "
            f"`{PACKAGE_COMMAND} download --help` lists the datasets it can fetch."
        )
    raise FileNotFoundError(message)
