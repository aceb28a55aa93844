"""The dataset interfaces workspaces train on (upstream's ``base_dataset``).

Datasets hand out numpy: one sample is a dict of ``(T, ...)`` arrays, a batch from
:meth:`__getitems__` a dict of ``(B, T, ...)`` arrays. The :class:`~.loader.DataLoader` turns
batches into ``mx.array`` s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import mlx.core as mx
import numpy as np

from diffusion_policy_mlx.model.common.normalizer import LinearNormalizer

Sample = dict[str, Any]


def collate(samples: Sequence[Mapping[str, Any]]) -> Sample:
    """Stack samples (nested dicts of arrays) into one batch with a leading ``B`` axis."""
    first = samples[0]
    return {
        key: collate([s[key] for s in samples])
        if isinstance(value, Mapping)
        else np.stack([s[key] for s in samples])
        for key, value in first.items()
    }


class _SequenceDataset:
    """What both dataset kinds share: an empty default and the batched and shape-checked access."""

    def __len__(self) -> int:
        return 0

    def __getitem__(self, idx: int) -> Sample:
        raise IndexError(f"{type(self).__name__} is empty; index {idx} is out of range.")

    def __getitems__(self, indices: Sequence[int] | np.ndarray) -> Sample:
        """Samples ``indices`` stacked into one batch (torch's batched-fetch hook).

        Subclasses override this with one vectorized gather; the result must equal stacking
        ``self[i]`` for every ``i``.
        """
        return collate([self[int(i)] for i in indices])

    def get_normalizer(self, **kwargs: Any) -> LinearNormalizer:
        """A normalizer fitted on this dataset's fields."""
        raise NotImplementedError(f"{type(self).__name__} does not define get_normalizer.")

    def get_all_actions(self) -> mx.array:
        """Every action of the underlying data, ``(N, Da)``."""
        raise NotImplementedError(f"{type(self).__name__} does not define get_all_actions.")

    def _check_shapes(self, expected: Mapping[str, Sequence[int]], config: str) -> None:
        """Raise if a sample's per-step shapes differ from ``expected`` (``'obs.image'`` ->
        shape); the error names the key, both shapes and the data source."""
        if len(self) == 0:
            raise ValueError(f"{self!r} has no samples, so its shapes cannot be checked.")
        sample = self[0]
        for path, shape in expected.items():
            value: Any = sample
            for part in path.split("."):
                if part not in value:
                    raise KeyError(
                        f"{config} names {path}, but {self!r} samples have no such key "
                        f"(they have {_paths(sample)})."
                    )
                value = value[part]
            actual = tuple(value.shape[1:])
            if actual != tuple(shape):
                raise ValueError(
                    f"{config} gives {path} the per-step shape {tuple(shape)}, but {self!r} "
                    f"yields {actual}. Fix the task config or point it at the matching data."
                )


def _paths(sample: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in sample.items():
        if isinstance(value, Mapping):
            out += _paths(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


class BaseLowdimDataset(_SequenceDataset):
    """Samples ``{'obs': (T, Do), 'action': (T, Da)}`` (float32 numpy)."""

    def get_validation_dataset(self) -> BaseLowdimDataset:
        """The held-out samples; the base dataset holds none."""
        return BaseLowdimDataset()

    def check_dims(self, obs_dim: int, action_dim: int) -> None:
        """Raise a clear error unless samples are ``(T, obs_dim)`` obs and ``(T, action_dim)``
        actions, the ``obs_dim``/``action_dim`` of a lowdim task config."""
        self._check_shapes({"obs": (obs_dim,), "action": (action_dim,)}, "The task config")


class BaseImageDataset(_SequenceDataset):
    """Samples ``{'obs': {key: (T, ...)}, 'action': (T, Da)}``; images are ``(T, C, H, W)``
    float32 in ``[0, 1]``, channels first as upstream hands them to the policy."""

    def get_validation_dataset(self) -> BaseImageDataset:
        """The held-out samples; the base dataset holds none."""
        return BaseImageDataset()

    def check_shape_meta(self, shape_meta: Mapping[str, Any]) -> None:
        """Raise a clear error unless samples match a task's ``shape_meta``
        (``{'obs': {key: {'shape': [...]}}, 'action': {'shape': [...]}}``)."""
        expected = {f"obs.{key}": attr["shape"] for key, attr in shape_meta["obs"].items()}
        expected["action"] = shape_meta["action"]["shape"]
        self._check_shapes(expected, "The task's shape_meta")
