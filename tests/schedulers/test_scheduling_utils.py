"""Beta schedules and timestep indexing shared by the schedulers."""

import math

import mlx.core as mx
import numpy as np
import pytest

from diffusion_policy_mlx.schedulers.scheduling_utils import gather, make_betas, spaced_timesteps


def test_linear_and_scaled_linear_betas():
    np.testing.assert_array_equal(make_betas(5, 0.0, 1.0, "linear", None), [0, 0.25, 0.5, 0.75, 1])
    betas = make_betas(1000, 1e-4, 0.02, "linear", None)
    assert betas.dtype == np.float32
    # both ends are exact, as torch.linspace fills each half from its own end
    assert betas[0] == np.float32(1e-4) and betas[-1] == np.float32(0.02)
    assert np.all(np.diff(betas) > 0)
    scaled = make_betas(3, 0.01, 0.09, "scaled_linear", None)
    np.testing.assert_allclose(scaled, [0.01, 0.04, 0.09], rtol=1e-6)


def test_cosine_betas_and_trained_betas():
    betas = make_betas(4, 0.0, 0.0, "squaredcos_cap_v2", None)

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    assert betas[0] == np.float32(1 - alpha_bar(0.25) / alpha_bar(0.0))
    assert betas[-1] == np.float32(0.999)  # capped: alpha_bar(1) is ~0
    np.testing.assert_array_equal(make_betas(2, 0, 0, "linear", [0.1, 0.2]), np.float32([0.1, 0.2]))


def test_spaced_timesteps_and_gather():
    np.testing.assert_array_equal(spaced_timesteps(100, 16), np.arange(90, -1, -6))
    table = mx.arange(10, dtype=mx.float32) * 2
    assert gather(table, 3, 3).item() == 6
    assert gather(table, mx.array(4), 3).shape == ()
    per_sample = gather(table, mx.array([1, 2]), 3)
    assert per_sample.shape == (2, 1, 1)
    np.testing.assert_array_equal(np.array(per_sample).ravel(), [2, 4])
    with pytest.raises(IndexError, match="timestep -1"):
        gather(table, -1, 3)
