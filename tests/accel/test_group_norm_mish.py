"""The fused CUDA kernel against MLX's GroupNorm + Mish at the U-Net's shapes. It needs MLX's
CUDA backend (run this file on an NVIDIA GPU); on other machines it is skipped, and
``Conv1dBlock``'s tests cover the ops path the kernel replaces."""

from diffusion_policy_mlx.accel.group_norm_mish import FusedConv1dBlock, group_norm_mish

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from diffusion_policy_mlx import accel
from diffusion_policy_mlx.model.common.activation import mish
from diffusion_policy_mlx.model.diffusion.conv1d_components import Conv1dBlock

pytestmark = pytest.mark.skipif(
    not (mx.cuda.is_available() and mx.default_device() == mx.gpu),
    reason="needs MLX's CUDA backend",
)


def reference(x, norm, scale=None, shift=None, residual=None):
    y = mish(norm(x))
    if scale is not None:
        y = y * scale[:, None, :]
    if shift is not None:
        y = y + shift[:, None, :]
    return y if residual is None else y + residual


@pytest.mark.parametrize(
    "batch, length, channels", [(1, 16, 256), (1, 4, 1024), (56, 8, 512), (256, 16, 64)]
)
@pytest.mark.parametrize("extras", ["none", "film", "shift", "residual"])
def test_matches_group_norm_mish(batch, length, channels, extras):
    rng = np.random.default_rng(channels + length)
    norm = nn.GroupNorm(8, channels, pytorch_compatible=True)
    norm.weight = mx.array(rng.standard_normal(channels).astype(np.float32))
    norm.bias = mx.array(rng.standard_normal(channels).astype(np.float32))
    # an offset mean, as conv outputs have, tests the two-pass variance
    x = mx.array(3.0 + rng.standard_normal((batch, length, channels)).astype(np.float32))
    kwargs = {}
    if extras in ("film", "shift"):
        kwargs["shift"] = mx.array(rng.standard_normal((batch, channels)).astype(np.float32))
    if extras == "film":
        kwargs["scale"] = mx.array(rng.standard_normal((batch, channels)).astype(np.float32))
    if extras == "residual":
        kwargs["residual"] = mx.array(rng.standard_normal(x.shape).astype(np.float32))
    got = group_norm_mish(x, norm.weight, norm.bias, 8, norm.eps, **kwargs)
    np.testing.assert_allclose(np.array(got), np.array(reference(x, norm, **kwargs)), atol=2e-5)


def test_rejects_channels_that_do_not_split():
    x = mx.zeros((1, 4, 12))
    with pytest.raises(ValueError, match="12 channels do not split into 8"):
        group_norm_mish(x, mx.ones(12), mx.zeros(12), 8)


@pytest.mark.parametrize("training", [True, False])
def test_swapped_block_runs_the_kernel_in_eval_mode(training, cpu_config):
    rng = np.random.default_rng(1)
    block = Conv1dBlock(3, 16, kernel_size=3, n_groups=8)
    block.train(training)
    x = mx.array(rng.standard_normal((2, 6, 3)).astype(np.float32))
    scale, shift = (mx.array(rng.standard_normal((2, 16)).astype(np.float32)) for _ in "ab")
    want = block(x, scale, shift)
    fused = accel.swap_layers(block, cpu_config(device=mx.Device(mx.gpu), fused_group_norm=True))
    assert isinstance(fused, FusedConv1dBlock)
    np.testing.assert_allclose(np.array(fused(x, scale, shift)), np.array(want), atol=2e-5)
