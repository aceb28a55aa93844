"""Each block against a direct numpy transcription of torch's definitions, with torch-layout
weights loaded through the upstream loader (so the layout conversion is exercised too): as built,
and with accel's CPU layers swapped in."""

from diffusion_policy_mlx.accel import extension

import mlx.core as mx
import numpy as np
import pytest
from conv1d_reference import (
    conv1d_ref,
    conv_transpose1d_ref,
    from_cl,
    group_norm_ref,
    mish_ref,
    randn,
    to_cl,
)
from mlx.utils import tree_flatten

from diffusion_policy_mlx import accel
from diffusion_policy_mlx.common.upstream import load_upstream_state_dict
from diffusion_policy_mlx.model.diffusion.conv1d_components import (
    Conv1dBlock,
    Downsample1d,
    Upsample1d,
)


@pytest.fixture(params=["plain", "cpu"])
def build(request, cpu_config):
    """The layer as built, or with accel's CPU layers (and the extension, where built)."""
    if request.param == "plain":
        return lambda layer: layer
    return lambda layer: accel.swap_layers(layer, cpu_config(extension.load()[0]))


def test_downsample1d(build):
    m = build(Downsample1d(6))
    sd = {"conv.weight": randn(6, 6, 3), "conv.bias": randn(6)}
    load_upstream_state_dict(m, sd)
    x = randn(2, 6, 9)
    y = m(to_cl(x))
    assert y.shape == (2, 5, 6)
    expected = conv1d_ref(x, sd["conv.weight"], sd["conv.bias"], stride=2, padding=1)
    np.testing.assert_allclose(from_cl(y), expected, atol=1e-5)


def test_upsample1d(build):
    m = build(Upsample1d(5))
    sd = {"conv.weight": randn(5, 5, 4), "conv.bias": randn(5)}
    load_upstream_state_dict(m, sd)
    x = randn(2, 5, 4)
    y = m(to_cl(x))
    assert y.shape == (2, 8, 5)
    expected = conv_transpose1d_ref(x, sd["conv.weight"], sd["conv.bias"], stride=2, padding=1)
    np.testing.assert_allclose(from_cl(y), expected, atol=1e-5)


def test_upsample1d_hand_derived(build):
    # One channel, kernel [1, 2, 3, 4], stride 2, padding 1: input [1, 10] scatters
    # [1,2,3,4] at 0 and [10,20,30,40] at 2 -> [1,2,13,24,30,40], cropped by 1 at each end.
    m = build(Upsample1d(1))
    load_upstream_state_dict(
        m, {"conv.weight": np.array([[[1, 2, 3, 4]]], np.float32), "conv.bias": np.zeros(1)}
    )
    y = m(mx.array([[[1.0], [10.0]]]))
    np.testing.assert_allclose(np.array(y)[0, :, 0], [2, 13, 24, 30])


def conv1d_block_state_dict(c_in, c_out, kernel):
    """Random torch-layout weights of a Conv1dBlock: the conv, then the GroupNorm affine."""
    return {
        "block.0.weight": randn(c_out, c_in, kernel),
        "block.0.bias": randn(c_out),
        "block.1.weight": randn(c_out),
        "block.1.bias": randn(c_out),
    }


def test_conv1d_block(build):
    m = build(Conv1dBlock(3, 8, kernel_size=5, n_groups=4))
    sd = conv1d_block_state_dict(3, 8, 5)
    load_upstream_state_dict(m, sd)
    x = randn(2, 3, 7)
    y = m(to_cl(x))
    h = conv1d_ref(x, sd["block.0.weight"], sd["block.0.bias"], padding=2)
    expected = mish_ref(group_norm_ref(h, 4, sd["block.1.weight"], sd["block.1.bias"]))
    np.testing.assert_allclose(from_cl(y), expected, atol=1e-5)


def test_conv1d_block_names_match_torch_sequential():
    names = {k for k, _ in tree_flatten(Conv1dBlock(4, 8, 3).parameters())}
    assert names == {"block.0.weight", "block.0.bias", "block.1.weight", "block.1.bias"}


def test_conv1d_block_rejects_bad_config():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        Conv1dBlock(4, 8, 4)
    with pytest.raises(ValueError, match="not divisible by n_groups=8"):
        Conv1dBlock(4, 12, 3)


@pytest.mark.parametrize("training", [True, False])
def test_conv1d_block_film_and_residual(training, build):
    m = build(Conv1dBlock(3, 16, kernel_size=3, n_groups=8))
    sd = conv1d_block_state_dict(3, 16, 3)
    load_upstream_state_dict(m, sd)
    m.train(training)
    x, scale, shift, residual = randn(2, 3, 6), randn(2, 16), randn(2, 16), randn(2, 16, 6)
    y = m(to_cl(x), mx.array(scale), mx.array(shift), to_cl(residual))
    h = conv1d_ref(x, sd["block.0.weight"], sd["block.0.bias"], padding=1)
    block = mish_ref(group_norm_ref(h, 8, sd["block.1.weight"], sd["block.1.bias"]))
    expected = block * scale[:, :, None] + shift[:, :, None] + residual
    np.testing.assert_allclose(from_cl(y), expected, atol=1e-5)
