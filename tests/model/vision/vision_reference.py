"""Deterministic weights shared by the PyTorch reference generator and the vision tests.

ResNet weights are far too large to commit, so ``tests/fixtures/vision_reference.safetensors``
stores only inputs and outputs; both sides rebuild the same weights from each parameter's name.
Pure numpy, so the generator (torch venv) and the tests (MLX venv) import the same recipe.
"""

import zlib
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "vision_reference.safetensors"

# Torch buffers whose values are part of the architecture, not of training: keep them.
KEPT = ("pos_x", "pos_y", "temperature", "num_batches_tracked")


def reference_value(name: str, like: np.ndarray) -> np.ndarray:
    """The value of parameter ``name`` with ``like``'s torch-layout shape.

    Seeded by the name, so it does not depend on iteration order. Conv/linear kernels are
    N(0, 1/fan_in), norm scales U(0.5, 1.5), biases and running means N(0, 0.1^2), running
    variances U(0.5, 1.5): non-trivial everywhere, yet activations stay O(1) through ResNet-50.
    """
    leaf = name.rsplit(".", 1)[-1]
    if leaf in KEPT:
        return np.asarray(like)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    shape = np.shape(like)
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    if leaf in ("weight", "running_var"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)


def reference_state_dict(template: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{name: reference_value(name, value)}`` for a torch-layout state_dict template."""
    return {name: reference_value(name, value) for name, value in template.items()}
