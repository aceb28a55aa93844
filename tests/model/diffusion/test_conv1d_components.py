"""Each block against a direct numpy transcription of torch's definitions, with torch-layout
weights loaded through the upstream loader (so the layout conversion is exercised too)."""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from diffusion_policy_mlx.common.upstream import load_upstream_state_dict
from diffusion_policy_mlx.model.diffusion.conv1d_components import (
    Conv1dBlock,
    Downsample1d,
    Upsample1d,
    conv1d_few_rows,
    conv1d_same,
    few_rows_limit,
    same_conv_tap_groups,
)

RNG = np.random.default_rng(0)


def conv1d_ref(x, w, b, stride=1, padding=0):
    """x (B, C_in, T), w (O, C_in, K) torch layout -> (B, O, T_out), cross-correlation."""
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding)))
    k = w.shape[-1]
    t_out = (xp.shape[-1] - k) // stride + 1
    out = np.empty((x.shape[0], w.shape[0], t_out))
    for t in range(t_out):
        window = xp[:, :, t * stride : t * stride + k]
        out[:, :, t] = np.einsum("bik,oik->bo", window, w)
    return out + b[None, :, None]


def conv_transpose1d_ref(x, w, b, stride, padding):
    """x (B, C_in, T), w (C_in, O, K) torch layout: each input step scatters a kernel."""
    k = w.shape[-1]
    full = np.zeros((x.shape[0], w.shape[1], (x.shape[-1] - 1) * stride + k))
    for t in range(x.shape[-1]):
        full[:, :, t * stride : t * stride + k] += np.einsum("bi,iok->bok", x[:, :, t], w)
    return full[:, :, padding : full.shape[-1] - padding] + b[None, :, None]


def group_norm_ref(x, groups, weight, bias, eps=1e-5):
    b, c, t = x.shape
    g = x.reshape(b, groups, -1)
    g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)
    return g.reshape(b, c, t) * weight[None, :, None] + bias[None, :, None]


def mish_ref(x):
    return x * np.tanh(np.log1p(np.exp(x)))


def to_cl(x):
    return mx.array(x.transpose(0, 2, 1).astype(np.float32))


def from_cl(y):
    return np.array(y).transpose(0, 2, 1)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def test_downsample1d():
    m = Downsample1d(6)
    sd = {"conv.weight": randn(6, 6, 3), "conv.bias": randn(6)}
    load_upstream_state_dict(m, sd)
    x = randn(2, 6, 9)
    y = m(to_cl(x))
    assert y.shape == (2, 5, 6)
    expected = conv1d_ref(x, sd["conv.weight"], sd["conv.bias"], stride=2, padding=1)
    np.testing.assert_allclose(from_cl(y), expected, atol=1e-5)


def test_downsample1d_even_length_and_gradients_match_the_strided_conv():
    # On the CPU the layer is a GEMM over strided taps; its values and gradients must be the
    # strided convolution's, which the layer's own ``conv`` still computes.
    m = Downsample1d(4)
    load_upstream_state_dict(m, {"conv.weight": randn(4, 4, 3), "conv.bias": randn(4)})
    x = mx.array(randn(3, 8, 4))

    def loss(params, x, layer):
        m.update(params)
        return (layer(x) ** 2).sum()

    params = m.trainable_parameters()
    gemm = mx.value_and_grad(loss, argnums=(0, 1))(params, x, m)
    conv = mx.value_and_grad(loss, argnums=(0, 1))(params, x, m.conv)
    assert m(x).shape == (3, 4, 4)
    np.testing.assert_allclose(gemm[0].item(), conv[0].item(), rtol=1e-5)
    (g_params, g_x), (c_params, c_x) = gemm[1], conv[1]
    np.testing.assert_allclose(np.array(g_x), np.array(c_x), rtol=1e-4, atol=1e-4)
    for key in ("weight", "bias"):
        np.testing.assert_allclose(
            np.array(g_params["conv"][key]), np.array(c_params["conv"][key]), rtol=1e-4, atol=1e-4
        )


def test_upsample1d():
    m = Upsample1d(5)
    sd = {"conv.weight": randn(5, 5, 4), "conv.bias": randn(5)}
    load_upstream_state_dict(m, sd)
    x = randn(2, 5, 4)
    y = m(to_cl(x))
    assert y.shape == (2, 8, 5)
    expected = conv_transpose1d_ref(x, sd["conv.weight"], sd["conv.bias"], stride=2, padding=1)
    np.testing.assert_allclose(from_cl(y), expected, atol=1e-5)


def test_upsample1d_hand_derived():
    # One channel, kernel [1, 2, 3, 4], stride 2, padding 1: input [1, 10] scatters
    # [1,2,3,4] at 0 and [10,20,30,40] at 2 -> [1,2,13,24,30,40], cropped by 1 at each end.
    m = Upsample1d(1)
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


def test_conv1d_block():
    m = Conv1dBlock(3, 8, kernel_size=5, n_groups=4)
    sd = conv1d_block_state_dict(3, 8, 5)
    load_upstream_state_dict(m, sd)
    x = randn(2, 3, 7)
    y = m(to_cl(x))
    h = conv1d_ref(x, sd["block.0.weight"], sd["block.0.bias"], padding=2)
    expected = mish_ref(group_norm_ref(h, 4, sd["block.1.weight"], sd["block.1.bias"]))
    np.testing.assert_allclose(from_cl(y), expected, atol=1e-5)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("shape", [(1, 4), (2, 2), (1, 1), (2, 8)])
def test_conv1d_few_rows_is_the_convolution_and_its_gradient(kernel, shape, training):
    """In eval mode through the CPU kernel where it is built, in training mode as weight @
    columns^T."""
    batch, length = shape
    m = Conv1dBlock(6, 8, kernel_size=kernel, n_groups=4)
    m.train(training)
    conv = m.block[0]
    x = mx.array(randn(batch, length, 6), mx.float32)
    w = conv.weight.transpose(0, 2, 1)  # torch layout (O, C_in, K)
    expected = conv1d_ref(
        np.array(x).transpose(0, 2, 1), np.array(w), np.array(conv.bias), padding=kernel // 2
    )
    np.testing.assert_allclose(from_cl(conv1d_few_rows(conv, x)), expected, atol=1e-5)
    cotangent = mx.array(randn(batch, length, 8), mx.float32)

    def loss(fn, x, weight):
        conv.weight = weight
        return mx.sum(fn(x) * cotangent)

    grads = [
        mx.grad(lambda x, w, fn=fn: loss(fn, x, w), argnums=(0, 1))(x, conv.weight)
        for fn in (lambda x: conv1d_few_rows(conv, x), conv)
    ]
    for got, want in zip(*grads, strict=True):
        np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-5)


def test_conv1d_block_takes_the_few_rows_path_on_the_cpu(monkeypatch):
    """Batch 1 on the CPU, up to few_rows_limit() rows: the few-rows path, the same block
    output as MLX's convolution; one row more: ``conv1d_same``."""
    from diffusion_policy_mlx.model.diffusion import conv1d_components

    calls = []

    def spy(conv, x):
        calls.append(x.shape)
        return conv1d_few_rows(conv, x)

    monkeypatch.setattr(conv1d_components, "conv1d_few_rows", spy)
    m = Conv1dBlock(16, 16, kernel_size=5, n_groups=8)
    m.eval()
    limit = few_rows_limit(m.block[0])
    x = mx.array(randn(1, limit, 16), mx.float32)
    with mx.stream(mx.cpu):
        few = m(x)
        assert calls == [(1, limit, 16)]
        m(mx.array(randn(1, limit + 1, 16), mx.float32))  # MLX's convolution
        assert len(calls) == 1
        monkeypatch.setattr(conv1d_components, "few_rows_limit", lambda conv: 0)
        plain = m(x)
        assert len(calls) == 1
    np.testing.assert_allclose(np.array(few), np.array(plain), atol=1e-5)


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


def test_conv1d_block_trains_through_conv1d_same_on_the_cpu(monkeypatch):
    """More than a few rows on the CPU: the block's convolution is ``conv1d_same`` (the bias
    added after), and its output and gradients are those of ``nn.Conv1d``."""
    from diffusion_policy_mlx.model.diffusion import conv1d_components

    calls = []

    def spy(x, weight):
        calls.append(x.shape)
        return conv1d_same(x, weight)

    m = Conv1dBlock(6, 8, kernel_size=5, n_groups=4)
    x = mx.array(randn(2, 20, 6), mx.float32)  # 40 rows: more than any few_rows_limit()

    def loss(params):
        m.update(params)
        return mx.sum(m(x) ** 2)

    with mx.stream(mx.cpu):
        same = mx.value_and_grad(loss)(m.trainable_parameters())
        monkeypatch.setattr(conv1d_components, "conv1d_same", spy)
        mx.eval(m(x))
        assert calls == [(2, 20, 6)]
        monkeypatch.setattr(
            conv1d_components, "conv1d_same", lambda x, w: mx.conv1d(x, w, padding=2)
        )
        plain = mx.value_and_grad(loss)(m.trainable_parameters())
    np.testing.assert_allclose(same[0].item(), plain[0].item(), rtol=1e-6)
    for (name, g), (_, w) in zip(tree_flatten(same[1]), tree_flatten(plain[1]), strict=True):
        np.testing.assert_allclose(np.array(g), np.array(w), atol=1e-5, err_msg=name)


def test_conv1d_block_names_match_torch_sequential():
    names = {k for k, _ in tree_flatten(Conv1dBlock(4, 8, 3).parameters())}
    assert names == {"block.0.weight", "block.0.bias", "block.1.weight", "block.1.bias"}


def test_conv1d_block_rejects_bad_config():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        Conv1dBlock(4, 8, 4)
    with pytest.raises(ValueError, match="not divisible by n_groups=8"):
        Conv1dBlock(4, 12, 3)


@pytest.mark.parametrize("training", [True, False])
def test_conv1d_block_film_and_residual(training):
    # On an NVIDIA GPU the eval-mode call runs the fused kernel; elsewhere MLX's ops.
    m = Conv1dBlock(3, 16, kernel_size=3, n_groups=8)
    sd = conv1d_block_state_dict(3, 16, 3)
    load_upstream_state_dict(m, sd)
    m.train(training)
    x, scale, shift, residual = randn(2, 3, 6), randn(2, 16), randn(2, 16), randn(2, 16, 6)
    y = m(to_cl(x), mx.array(scale), mx.array(shift), to_cl(residual))
    h = conv1d_ref(x, sd["block.0.weight"], sd["block.0.bias"], padding=1)
    block = mish_ref(group_norm_ref(h, 8, sd["block.1.weight"], sd["block.1.bias"]))
    expected = block * scale[:, :, None] + shift[:, :, None] + residual
    np.testing.assert_allclose(from_cl(y), expected, atol=1e-5)
