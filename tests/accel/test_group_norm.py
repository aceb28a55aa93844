"""The CPU GroupNorm kernel against float64 numpy (forward) and MLX's own GroupNorm under
autodiff (gradients), and the norms accel swaps it into."""

from types import SimpleNamespace

from diffusion_policy_mlx.accel.group_norm import CpuGroupNorm

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from diffusion_policy_mlx import accel
from diffusion_policy_mlx.model.common.activation import mish
from diffusion_policy_mlx.model.common.normalization import ACTIVATIONS, GroupNorm
from diffusion_policy_mlx.model.vision.resnet import replace_bn_with_gn, resnet18

# accel's CPU machinery against MLX on the CPU, also where a GPU is the default device
pytestmark = pytest.mark.usefixtures("cpu_device")


RNG = np.random.default_rng(0)

# (B, S, C, groups): the U-Net's levels, a ResNet stage, a single step, and channel counts
# that leave partial vectors (C = 20, 48) and groups narrower than a vector (C / G = 5, 16).
SHAPES = [
    (2, 4, 256, 8),
    (3, 16, 64, 4),
    (2, 49, 128, 8),
    (2, 1, 32, 8),
    (2, 5, 20, 4),
    (3, 7, 48, 3),
]


def _inputs(batch, steps, channels, offset=0.0):
    x = RNG.standard_normal((batch, steps, channels)) * 3.0 + offset
    w = RNG.standard_normal(channels)
    b = RNG.standard_normal(channels)
    return x, w, b


def _numpy_reference(x, w, b, groups, activation, eps=1e-5):
    batch, steps, channels = x.shape
    g = x.reshape(batch, steps, groups, channels // groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    h = ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * w + b
    if activation == "mish":
        return h * np.tanh(np.log1p(np.exp(h)))
    if activation == "relu":
        return np.maximum(h, 0.0)
    return h


def _mlx_reference(groups, activation):
    """MLX's GroupNorm and activation, differentiable in (x, weight, bias)."""

    def f(x, w, b):
        norm = nn.GroupNorm(groups, x.shape[-1], pytorch_compatible=True)
        norm.weight, norm.bias = w, b
        return ACTIVATIONS[activation](norm(x))

    return f


def _f32(*arrays):
    return [mx.array(a.astype(np.float32)) for a in arrays]


@pytest.mark.parametrize("activation", ["none", "mish", "relu"])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_float64(shape, activation, cpu_kernels):
    batch, steps, channels, groups = shape
    # an offset far from zero: the variance must not come from E[x^2] - E[x]^2
    x, w, b = _inputs(batch, steps, channels, offset=40.0)
    y = cpu_kernels.group_norm(*_f32(x, w, b), groups=groups, activation=activation)
    expected = _numpy_reference(x.astype(np.float32).astype(np.float64), w, b, groups, activation)
    np.testing.assert_allclose(np.array(y), expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("activation", ["none", "mish", "relu"])
@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_match_mlx_autodiff(shape, activation, cpu_kernels):
    batch, steps, channels, groups = shape
    x, w, b = _inputs(batch, steps, channels, offset=1.0)
    dy = RNG.standard_normal(x.shape)
    args = _f32(x, w, b)

    def ours(x, w, b):
        return cpu_kernels.group_norm(x, w, b, groups=groups, activation=activation)

    _, got = mx.vjp(ours, args, _f32(dy))
    _, want = mx.vjp(_mlx_reference(groups, activation), args, _f32(dy))
    for name, g, e in zip(["dx", "dweight", "dbias"], got, want, strict=True):
        scale = float(mx.abs(e).max())
        err = float(mx.abs(g - e).max())
        assert err <= 2e-5 * scale + 1e-6, f"{name}: max error {err:.2e} of {scale:.2e}"


def test_input_gradient_of_a_plain_norm_sums_to_zero_per_group(cpu_kernels):
    # d/dx of a normalisation is orthogonal to shifting a whole group: its sum is zero
    x, w, b = _f32(*_inputs(2, 6, 32, offset=5.0))
    dy = mx.array(RNG.standard_normal((2, 6, 32)).astype(np.float32))
    (dx,) = mx.vjp(lambda x: cpu_kernels.group_norm(x, w, b, groups=4), [x], [dy])[1]
    sums = np.array(dx).reshape(2, 6, 4, 8).sum(axis=(1, 3))
    np.testing.assert_allclose(sums, 0.0, atol=1e-4)


def test_mish_far_out_in_both_tails(cpu_kernels):
    h = np.linspace(-120.0, 120.0, 64).reshape(1, 1, 64)
    # weight 1, bias h: x constant per group makes xhat 0, so the activation sees h exactly
    x, w, b = _f32(np.zeros_like(h), np.ones(64), h.reshape(64))
    y = np.array(cpu_kernels.group_norm(x, w, b, groups=8, activation="mish"))
    np.testing.assert_allclose(y, np.array(mish(mx.array(h.astype(np.float32)))), atol=1e-6)
    assert np.isfinite(y).all()


def test_kernel_under_compile_and_on_another_stream(cpu_kernels):
    x, w, b = _f32(*_inputs(4, 8, 64))
    dy = mx.ones((4, 8, 64))

    def loss_grads(x, w, b):
        return mx.vjp(
            lambda *a: cpu_kernels.group_norm(*a, groups=8, activation="mish"), [x, w, b], [dy]
        )

    eager = loss_grads(x, w, b)
    compiled = mx.compile(loss_grads)(x, w, b)
    with mx.stream(mx.new_stream(mx.cpu)):
        other = loss_grads(x, w, b)
    flat = [tree_flatten(r) for r in (eager, compiled, other)]
    for (_, a), (_, c), (_, o) in zip(*flat, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(c))
        np.testing.assert_array_equal(np.array(a), np.array(o))


def test_errors_name_the_input(cpu_kernels):
    x, w, b = _f32(*_inputs(2, 3, 12))
    with pytest.raises(ValueError, match="multiple of groups"):
        cpu_kernels.group_norm(x, w, b, groups=5)
    with pytest.raises(ValueError, match="activation"):
        cpu_kernels.group_norm(x, w, b, groups=4, activation="gelu")
    with pytest.raises(ValueError, match="float32"):
        cpu_kernels.group_norm(x.astype(mx.float16), w, b, groups=4)
    with pytest.raises(ValueError, match=r"\(B, S, C\)"):
        cpu_kernels.group_norm(x[0], w, b, groups=4)
    with pytest.raises(ValueError, match="activation must be one of"):
        GroupNorm(4, 12, pytorch_compatible=True)(x, activation="tanh")


@pytest.mark.parametrize("activation", ["none", "mish", "relu"])
def test_swapped_norm_routes_to_the_kernel_and_agrees_with_mlx(activation, cpu_config, cpu_kernels):
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs["activation"])
        return cpu_kernels.group_norm(*args, **kwargs)

    norm = GroupNorm(4, 32, pytorch_compatible=True)
    norm.weight = mx.array(RNG.standard_normal(32).astype(np.float32))
    norm.bias = mx.array(RNG.standard_normal(32).astype(np.float32))
    x = mx.array(RNG.standard_normal((3, 5, 7, 32)).astype(np.float32))  # (B, H, W, C)
    fast = accel.swap_layers(norm, cpu_config(SimpleNamespace(group_norm=spy)))
    assert isinstance(fast, CpuGroupNorm)
    ours = fast(x, activation=activation)
    assert calls == [activation]
    want = norm(x, activation=activation)
    np.testing.assert_allclose(np.array(ours), np.array(want), rtol=1e-5, atol=2e-5)
    fast(x.astype(mx.float16))  # not float32: MLX's ops
    assert len(calls) == 1


def test_cases_that_keep_mlx_norms(cpu_config, cpu_kernels):
    config = cpu_config(cpu_kernels)
    for norm in (
        GroupNorm(4, 32),  # MLX's own channel grouping
        GroupNorm(4, 32, affine=False, pytorch_compatible=True),
        nn.GroupNorm(4, 32, pytorch_compatible=True),  # not the model's norm
    ):
        assert type(accel.swap_layers(norm, config)) is type(norm)
    # without the extension the model's norm stays plain
    norm = GroupNorm(4, 32, pytorch_compatible=True)
    assert type(accel.swap_layers(norm, cpu_config(None))) is GroupNorm


def test_resnet_norms_become_kernel_group_norms(cpu_config, cpu_kernels):
    model = resnet18()
    replace_bn_with_gn(model)
    accel.swap_layers(model, cpu_config(cpu_kernels))
    assert isinstance(model.bn1, CpuGroupNorm)
    assert isinstance(model.layer1[0].bn2, CpuGroupNorm)
    assert "weight" in model.layer1[0].bn2
