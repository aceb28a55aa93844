"""Published datasets: where they live under ``data/``, how to fetch and verify them.

``python -m diffusion_policy_mlx.data download pusht`` puts upstream's PushT demonstrations at
``data/pusht/pusht_cchi_v7_replay.zarr``, the path upstream's task configs use.
"""

from diffusion_policy_mlx.data.download import download, verify
from diffusion_policy_mlx.data.registry import DATASETS, RemoteDataset, require_dataset

__all__ = ["DATASETS", "RemoteDataset", "download", "require_dataset", "verify"]
