import math

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file

from diffusion_policy_mlx.model.diffusion.positional_embedding import SinusoidalPosEmb


def test_hand_derived_values():
    # dim=4: half=2, frequencies exp(-log(10000) * [0, 1]) = [1, 1e-4].
    emb = np.array(SinusoidalPosEmb(4)(mx.array([0, 1, 50])))
    expected = np.array(
        [
            [0.0, 0.0, 1.0, 1.0],
            [math.sin(1), math.sin(1e-4), math.cos(1), math.cos(1e-4)],
            [math.sin(50), math.sin(50e-4), math.cos(50), math.cos(50e-4)],
        ]
    )
    np.testing.assert_allclose(emb, expected, atol=1e-6)
    assert emb.dtype == np.float32


@pytest.mark.parametrize("name", ["unet_global", "unet_local"])
def test_matches_upstream(fixtures_dir, name):
    t = load_file(fixtures_dir / f"{name}.safetensors")
    emb = SinusoidalPosEmb(32)(mx.array(t["input.timestep"]))
    np.testing.assert_allclose(
        np.array(emb), t["intermediate.diffusion_step_encoder.0"], atol=1e-5, rtol=1e-4
    )


def test_float_timesteps_accepted():
    emb = np.array(SinusoidalPosEmb(8)(mx.array([2.5])))
    freqs = np.exp(-math.log(10000) / 3 * np.arange(4))
    np.testing.assert_allclose(
        emb[0], np.concatenate([np.sin(2.5 * freqs), np.cos(2.5 * freqs)]), atol=1e-6
    )


@pytest.mark.parametrize("dim", [2, 7])
def test_bad_dim_is_rejected(dim):
    with pytest.raises(ValueError, match="even number"):
        SinusoidalPosEmb(dim)
