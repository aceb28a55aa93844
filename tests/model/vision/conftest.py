"""Fixtures for the vision tests: the PyTorch reference outputs and the weights they were made with."""

import json
from collections.abc import Callable

import mlx.nn as nn
import numpy as np
import pytest
from safetensors import safe_open
from vision_reference import FIXTURE, reference_state_dict

from diffusion_policy_mlx.common.upstream import load_upstream_state_dict, to_upstream_state_dict


@pytest.fixture(scope="session")
def vision_ref() -> dict[str, np.ndarray]:
    """Inputs and outputs from ``tests/fixtures/vision_make_reference.py`` (PyTorch, CPU)."""
    with safe_open(str(FIXTURE), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="session")
def vision_ref_keys() -> dict[str, list[str]]:
    """The torch reference models' ``state_dict`` keys, by model name."""
    with safe_open(str(FIXTURE), framework="numpy") as f:
        meta = f.metadata()
    return {
        k.removeprefix("keys."): json.loads(v) for k, v in meta.items() if k.startswith("keys.")
    }


@pytest.fixture(scope="session")
def load_reference_weights() -> Callable[[nn.Module], dict[str, np.ndarray]]:
    """Give an MLX model the reference weights through the upstream loader; returns the
    torch-layout state_dict that was loaded."""

    def load(model: nn.Module) -> dict[str, np.ndarray]:
        state_dict = reference_state_dict(to_upstream_state_dict(model))
        load_upstream_state_dict(model, state_dict)
        return state_dict

    return load
