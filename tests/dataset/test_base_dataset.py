"""The dataset interfaces: empty defaults, collation and the batched fetch."""

import numpy as np
import pytest

from diffusion_policy_mlx.dataset.base_dataset import BaseImageDataset, BaseLowdimDataset, collate


class Squares(BaseLowdimDataset):
    """obs = [i, i^2] at every step of a 3-step window; action = -i."""

    def __len__(self):
        return 4

    def __getitem__(self, idx):
        i = range(4)[idx]
        return {
            "obs": np.full((3, 2), [i, i * i], dtype=np.float32),
            "action": np.full((3, 1), -i, dtype=np.float32),
        }


def test_collate_nested():
    samples = [{"obs": {"a": np.array([i, i + 1])}, "action": np.array([[i]])} for i in range(3)]
    batch = collate(samples)
    np.testing.assert_array_equal(batch["obs"]["a"], [[0, 1], [1, 2], [2, 3]])
    assert batch["action"].shape == (3, 1, 1)


def test_default_batched_fetch_stacks_samples():
    batch = Squares().__getitems__(np.array([3, 1]))
    np.testing.assert_array_equal(batch["obs"][:, 0], [[3, 9], [1, 1]])
    np.testing.assert_array_equal(batch["action"][:, 2, 0], [-3, -1])


def test_empty_defaults():
    for base in (BaseLowdimDataset, BaseImageDataset):
        val = base().get_validation_dataset()
        assert type(val) is base and len(val) == 0
        with pytest.raises(IndexError):
            val[0]
        with pytest.raises(NotImplementedError):
            val.get_normalizer()
        with pytest.raises(ValueError, match="no samples"):
            val._check_shapes({"action": (2,)}, "config")


def test_check_dims_names_key_and_shapes():
    Squares().check_dims(obs_dim=2, action_dim=1)
    with pytest.raises(ValueError, match=r"action the per-step shape \(2,\).*yields \(1,\)"):
        Squares().check_dims(obs_dim=2, action_dim=2)
