"""accel's CPU convolutions: the strided GEMM, the few-row path, and ``conv1d_same`` with its
gradients, against MLX's convolutions and a numpy transcription of torch's."""

import copy

from diffusion_policy_mlx.accel import extension
from diffusion_policy_mlx.accel.conv1d import (
    FEW_ROWS,
    CpuConv1d,
    GemmConvTranspose1d,
    conv1d_same,
    same_conv_tap_groups,
)
from diffusion_policy_mlx.accel.few_row_matmul import MAX_ROWS

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from conv1d_reference import (
    conv1d_ref,
    from_cl,
    randn,
)
from mlx.utils import tree_flatten

from diffusion_policy_mlx import accel
from diffusion_policy_mlx.common.upstream import load_upstream_state_dict
from diffusion_policy_mlx.model.common.normalization import GroupNorm
from diffusion_policy_mlx.model.diffusion.conv1d_components import (
    Conv1dBlock,
    Downsample1d,
    Upsample1d,
)

# accel's CPU machinery against MLX on the CPU, also where a GPU is the default device
pytestmark = pytest.mark.usefixtures("cpu_device")


def test_downsample1d_even_length_and_gradients_match_the_strided_conv(cpu_config):
    # On the CPU the layer is a GEMM over strided taps; its values and gradients must be the
    # strided convolution's, which the plain layer computes.
    plain = Downsample1d(4)
    load_upstream_state_dict(plain, {"conv.weight": randn(4, 4, 3), "conv.bias": randn(4)})
    m = accel.swap_layers(copy.deepcopy(plain), cpu_config())
    x = mx.array(randn(3, 8, 4))

    def loss(params, x, layer):
        layer.update(params)
        return (layer(x) ** 2).sum()

    params = m.trainable_parameters()
    gemm = mx.value_and_grad(loss, argnums=(0, 1))(params, x, m)
    conv = mx.value_and_grad(loss, argnums=(0, 1))(params, x, plain)
    assert m(x).shape == (3, 4, 4)
    np.testing.assert_allclose(gemm[0].item(), conv[0].item(), rtol=1e-5)
    (g_params, g_x), (c_params, c_x) = gemm[1], conv[1]
    np.testing.assert_allclose(np.array(g_x), np.array(c_x), rtol=1e-4, atol=1e-4)
    for key in ("weight", "bias"):
        np.testing.assert_allclose(
            np.array(g_params["conv"][key]), np.array(c_params["conv"][key]), rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("shape", [(1, 4), (2, 2), (1, 1), (2, 8)])
def test_conv1d_few_rows_is_the_convolution_and_its_gradient(kernel, shape, training, cpu_config):
    """In eval mode through the CPU kernel where it is built, in training mode as weight @
    columns^T."""
    batch, length = shape
    m = accel.swap_layers(
        Conv1dBlock(6, 8, kernel_size=kernel, n_groups=4), cpu_config(extension.load()[0])
    )
    m.train(training)
    conv = m.block[0]
    x = mx.array(randn(batch, length, 6), mx.float32)
    w = conv.weight.transpose(0, 2, 1)  # torch layout (O, C_in, K)
    expected = conv1d_ref(
        np.array(x).transpose(0, 2, 1), np.array(w), np.array(conv.bias), padding=kernel // 2
    )
    np.testing.assert_allclose(from_cl(conv.few_rows(x)), expected, atol=1e-5)
    cotangent = mx.array(randn(batch, length, 8), mx.float32)

    def loss(fn, x, weight):
        conv.weight = weight
        return mx.sum(fn(x) * cotangent)

    grads = [
        mx.grad(lambda x, w, fn=fn: loss(fn, x, w), argnums=(0, 1))(x, conv.weight)
        for fn in (
            conv.few_rows,
            lambda x: mx.conv1d(x, conv.weight, padding=kernel // 2) + conv.bias,
        )
    ]
    for got, want in zip(*grads, strict=True):
        np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-5)


@pytest.mark.parametrize("with_kernels", [True, False], ids=["kernels", "mlx"])
def test_conv1d_block_takes_the_few_rows_path_on_the_cpu(monkeypatch, cpu_config, with_kernels):
    """Batch 1 in eval mode, up to MAX_ROWS rows with the extension (FEW_ROWS without): the
    few-rows path, the same block output as MLX's convolution; one row more: not."""
    kernels = extension.load()[0] if with_kernels else None
    if with_kernels and kernels is None:
        pytest.skip("the CPU extension is not in use")
    calls = []
    few_rows = CpuConv1d.few_rows

    def spy(self, x):
        calls.append(x.shape)
        return few_rows(self, x)

    monkeypatch.setattr(CpuConv1d, "few_rows", spy)
    plain = Conv1dBlock(16, 16, kernel_size=5, n_groups=8)
    plain.eval()
    m = accel.swap_layers(copy.deepcopy(plain), cpu_config(kernels))
    limit = MAX_ROWS if with_kernels else FEW_ROWS
    x = mx.array(randn(1, limit, 16), mx.float32)
    with mx.stream(mx.cpu):
        few = m(x)
        assert calls == [(1, limit, 16)]
        m(mx.array(randn(1, limit + 1, 16), mx.float32))
        assert len(calls) == 1
        m.train()
        m(x)
        assert len(calls) == (1 if with_kernels else 2)  # training: at most FEW_ROWS
    np.testing.assert_allclose(np.array(few), np.array(plain(x)), atol=1e-5)


@pytest.mark.parametrize(
    "length, kernel, groups",
    [
        (4, 5, [(0, 1, 2, 5), (1, 2, 1, 5), (2, 3, 0, 4), (3, 4, 0, 3)]),
        (8, 5, [(0, 1, 2, 5), (1, 2, 1, 5), (2, 6, 0, 5), (6, 7, 0, 4), (7, 8, 0, 3)]),
        (1, 5, [(0, 1, 2, 3)]),
        (6, 3, [(0, 1, 1, 3), (1, 5, 0, 3), (5, 6, 0, 2)]),
        (3, 1, [(0, 3, 0, 1)]),
    ],
)
def test_same_conv_tap_groups(length, kernel, groups):
    assert same_conv_tap_groups(length, kernel) == groups


@pytest.mark.parametrize("kernel", [1, 3, 5, 7])
@pytest.mark.parametrize("length", [1, 2, 4, 9])
def test_conv1d_same_is_the_convolution_and_its_gradient(kernel, length):
    """The output against the numpy transcription; both gradients against MLX's own gradient of
    ``mx.conv1d``, including the lengths where some taps read only padding."""
    x = mx.array(randn(3, length, 6), mx.float32)
    weight = mx.array(randn(5, kernel, 6), mx.float32)  # (C_out, K, C_in)
    expected = conv1d_ref(
        np.array(x).transpose(0, 2, 1),
        np.array(weight).transpose(0, 2, 1),
        np.zeros(5),
        padding=kernel // 2,
    )
    np.testing.assert_allclose(from_cl(conv1d_same(x, weight)), expected, atol=1e-5)
    cotangent = mx.array(randn(3, length, 5), mx.float32)

    def plain(x, w):
        return mx.conv1d(x, w, padding=kernel // 2)

    got = mx.vjp(conv1d_same, [x, weight], [cotangent])[1]
    want = mx.vjp(plain, [x, weight], [cotangent])[1]
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(np.array(g), np.array(w), atol=1e-5)


def test_conv1d_block_trains_through_conv1d_same_on_the_cpu(monkeypatch, cpu_config):
    """More than a few rows on the CPU: the block's convolution is ``conv1d_same`` (the bias
    added after), and its output and gradients are those of ``nn.Conv1d``."""
    from diffusion_policy_mlx.accel import conv1d

    calls = []

    def spy(x, weight):
        calls.append(x.shape)
        return conv1d_same(x, weight)

    plain = Conv1dBlock(6, 8, kernel_size=5, n_groups=4)
    m = accel.swap_layers(copy.deepcopy(plain), cpu_config())
    x = mx.array(randn(2, 20, 6), mx.float32)  # 40 rows: more than the few-rows paths take

    def loss(params, layer):
        layer.update(params)
        return mx.sum(layer(x) ** 2)

    with mx.stream(mx.cpu):
        monkeypatch.setattr(conv1d, "conv1d_same", spy)
        same = mx.value_and_grad(loss)(m.trainable_parameters(), m)
        assert calls == [(2, 20, 6)]
        want = mx.value_and_grad(loss)(plain.trainable_parameters(), plain)
    np.testing.assert_allclose(same[0].item(), want[0].item(), rtol=1e-6)
    for (name, g), (_, w) in zip(tree_flatten(same[1]), tree_flatten(want[1]), strict=True):
        np.testing.assert_allclose(np.array(g), np.array(w), atol=1e-5, err_msg=name)


def test_upsample_gemm_is_the_transposed_convolution_and_its_gradient(cpu_config):
    plain = Upsample1d(4)
    m = accel.swap_layers(copy.deepcopy(plain), cpu_config(device=mx.Device(mx.gpu)))
    assert isinstance(m.conv, GemmConvTranspose1d)  # on every device
    x = mx.array(randn(3, 5, 4))

    def loss(params, x, layer):
        layer.update(params)
        return (layer(x) ** 2).sum()

    got = mx.value_and_grad(loss, argnums=(0, 1))(m.trainable_parameters(), x, m)
    want = mx.value_and_grad(loss, argnums=(0, 1))(plain.trainable_parameters(), x, plain)
    np.testing.assert_allclose(got[0].item(), want[0].item(), rtol=1e-5)
    for (name, g), (_, w) in zip(tree_flatten(got[1]), tree_flatten(want[1]), strict=True):
        np.testing.assert_allclose(np.array(g), np.array(w), rtol=1e-4, atol=1e-4, err_msg=name)


def test_swaps_keep_names_frozen_state_and_go_back(cpu_config):
    block = Conv1dBlock(4, 8, 3)
    block.block[0].freeze(keys=["bias"])
    names = {k for k, _ in tree_flatten(block.parameters())}
    trainable = {k for k, _ in tree_flatten(block.trainable_parameters())}
    fast = accel.swap_layers(block, cpu_config(extension.load()[0]))
    assert isinstance(fast.block[0], CpuConv1d)
    assert {k for k, _ in tree_flatten(fast.parameters())} == names
    assert {k for k, _ in tree_flatten(fast.trainable_parameters())} == trainable
    assert type(copy.deepcopy(fast).block[0]) is CpuConv1d
    # other settings first return a layer to its plain type
    back = accel.swap_layers(fast, cpu_config(device=mx.Device(mx.gpu)))
    assert type(back.block[0]) is nn.Conv1d and type(back.block[1]) is GroupNorm
    assert "kernels" not in vars(back.block[0])
