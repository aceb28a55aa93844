"""The bfloat16 AMX convolution kernel against float64 numpy on bfloat16-rounded operands, its
weight layout, and where the U-Net's layers take it."""

import re
from types import SimpleNamespace

from diffusion_policy_mlx.accel import amx_conv1d, extension, settings
from diffusion_policy_mlx.accel.low_precision import SamplingWeights

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from diffusion_policy_mlx import accel
from diffusion_policy_mlx.model.diffusion.conv1d_components import Downsample1d, Upsample1d

# accel's CPU machinery against MLX on the CPU, also where a GPU is the default device
pytestmark = pytest.mark.usefixtures("cpu_device")


RNG = np.random.default_rng(0)


def _randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _bf16(a: np.ndarray) -> np.ndarray:
    """``a`` rounded to bfloat16 (nearest even), in float64."""
    bits = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return rounded.astype(np.uint32).view(np.float32).astype(np.float64)


def _numpy_conv(x, w, bias, stride, padding):
    """conv1d in float64: x (B, T, C), w (N, K, C) -> (B, T_out, N)."""
    kernel = w.shape[1]
    padded = np.pad(x, [(0, 0), (padding, padding), (0, 0)])
    out_length = (x.shape[1] + 2 * padding - kernel) // stride + 1
    y = np.zeros((x.shape[0], out_length, w.shape[0]))
    for k in range(kernel):
        y += padded[:, k : k + stride * (out_length - 1) + 1 : stride] @ w[:, k].T
    return y + bias


def test_bf16_helper_rounds_to_nearest_even():
    # 1 + 2^-8 is halfway between bfloat16 neighbours 1 and 1 + 2^-7: even mantissa wins
    halfway = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-9], np.float32)
    np.testing.assert_array_equal(_bf16(halfway), [1.0, 1 + 2**-6, 1.0])
    np.testing.assert_array_equal(
        _bf16(halfway), np.array(mx.array(halfway).astype(mx.bfloat16).astype(mx.float32))
    )


def test_pack_weight_puts_each_entry_in_its_tile_slot():
    c_out, kernel, c_in = 40, 3, 12  # 36 reduction entries: two k tiles; 40 channels: 2 panels
    w = np.arange(c_out * kernel * c_in, dtype=np.float32).reshape(c_out, kernel, c_in) / 64
    packed = np.array(amx_conv1d.pack_weight(mx.array(w)).astype(mx.float32))
    assert packed.shape == (4, 2, 16, 32)
    flat = _bf16(w.reshape(c_out, -1))
    for n, e in [(0, 0), (1, 1), (17, 5), (39, 35), (20, 32)]:
        block, channel, tile, entry = n // 16, n % 16, e // 32, e % 32
        assert packed[block, tile, entry // 2, 2 * channel + entry % 2] == flat[n, e]
    # channels 40..63 and reduction entries 36..63 are zeros
    assert not packed[2, :, :, 16:].any() and not packed[3].any()
    assert not packed[:, 1, 2:].any()


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    "batch, length, c_in, c_out, kernel, stride, padding",
    # the U-Net's 'same' convolutions at per-stream batch 28 (rows a multiple of 32 or not),
    # the 2-channel input layer, a 1x1 convolution (the residual and Upsample1d's product),
    # Downsample1d's stride-2 layer with an odd horizon, channels not a multiple of 32
    [
        (28, 16, 256, 256, 5, 1, 2),
        (3, 4, 1024, 64, 5, 1, 2),
        (5, 16, 2, 256, 5, 1, 2),
        (7, 8, 48, 100, 1, 1, 0),
        (6, 9, 40, 24, 3, 2, 1),
        (2, 3, 16, 8, 5, 1, 2),
    ],
)
def test_kernel_is_the_convolution_of_the_rounded_operands(
    batch, length, c_in, c_out, kernel, stride, padding, threads, amx
):
    x, w, bias = _randn(batch, length, c_in), _randn(c_out, kernel, c_in), _randn(c_out)
    got = amx.amx_conv1d(
        mx.array(x),
        amx_conv1d.pack_weight(mx.array(w)),
        mx.array(bias),
        kernel=kernel,
        stride=stride,
        padding=padding,
        threads=threads,
    )
    want = _numpy_conv(_bf16(x), _bf16(w), bias, stride, padding)
    assert got.dtype == mx.float32 and got.shape == want.shape
    # float32 accumulation of exact bfloat16 products
    np.testing.assert_allclose(np.array(got), want, rtol=1e-5, atol=1e-6 * np.sqrt(kernel * c_in))


def test_kernel_runs_compiled_and_on_a_second_stream(amx):
    x, w, bias = mx.array(_randn(4, 8, 32)), mx.array(_randn(64, 5, 32)), mx.array(_randn(64))
    packed = amx_conv1d.pack_weight(w)

    def f(x, packed, bias):
        return amx.amx_conv1d(x, packed, bias, kernel=5, padding=2)

    want = np.array(f(x, packed, bias))
    np.testing.assert_array_equal(np.array(mx.compile(f)(x, packed, bias)), want)
    with mx.stream(mx.new_stream(mx.cpu)):
        np.testing.assert_array_equal(np.array(f(x, packed, bias)), want)


@pytest.mark.parametrize(
    "x_shape, w_shape, kernel, dtype, message",
    [
        (
            (2, 8, 16),
            (2, 2, 16, 32),
            5,
            mx.bfloat16,
            "w must be the packed bfloat16 weight of shape (2,3,16,32)",
        ),
        ((2, 8, 16), (2, 3, 16, 32), 5, mx.float32, "w must be the packed bfloat16 weight"),
        ((8, 16), (2, 3, 16, 32), 5, mx.bfloat16, "expects x (B, T, C_in)"),
        ((2, 1, 16), (2, 1, 16, 32), 5, mx.bfloat16, "the kernel is longer than the padded input"),
    ],
)
def test_kernel_refuses_what_it_cannot_compute(x_shape, w_shape, kernel, dtype, message, amx):
    with pytest.raises(ValueError, match=re.escape(message)):
        amx.amx_conv1d(
            mx.zeros(x_shape), mx.zeros(w_shape, dtype=dtype), mx.zeros((16,)), kernel=kernel
        )


def _with(extension_module, **changes) -> SimpleNamespace:
    """The loaded extension with ``changes`` to its attributes."""
    return SimpleNamespace(**{**vars(extension_module), **changes})


def _bfloat16_layer(layer: nn.Module, kernels, cpu_config) -> tuple[nn.Module, SamplingWeights]:
    """``layer`` with the CPU layers swapped in and its bfloat16 sampling weights refreshed."""
    layer = accel.swap_layers(layer, cpu_config(kernels))
    weights = SamplingWeights(mx.bfloat16)
    weights.refresh(layer)
    return layer, weights


@pytest.mark.parametrize(
    "layer, x_shape",
    [
        (nn.Conv1d(32, 48, 5, padding=2), (4, 8, 32)),
        (nn.Conv1d(32, 48, 1), (4, 8, 32)),
        (Downsample1d(32), (4, 9, 32)),
        (Upsample1d(32), (4, 8, 32)),
    ],
    ids=["conv", "conv1x1", "downsample", "upsample"],
)
def test_layers_take_the_kernel_in_eval_mode_past_the_few_rows(layer, x_shape, cpu_config, amx):
    calls = []

    def spy(x, w, bias, **kwargs):
        calls.append(x.shape)
        return amx.amx_conv1d(x, w, bias, **kwargs)

    x = mx.array(_randn(*x_shape))
    few = x[:1, :2]  # 2 rows: the few-row path
    with mx.stream(mx.cpu):
        want, want_few = layer(x), layer(few)
        layer.eval()
        fast, weights = _bfloat16_layer(layer, _with(amx, amx_conv1d=spy), cpu_config)
        assert weights.arrays
        with weights.active():
            got = fast(x)
            got_few = fast(few)
            fast.train()  # training keeps float32
            trained = fast(x)
    assert calls == [x_shape]
    # bfloat16 rounding of both operands: about 2^-8 relative per product
    scale = np.abs(np.array(want)).max()
    assert 0 < np.abs(np.array(got) - np.array(want)).max() < 2e-2 * scale
    np.testing.assert_allclose(np.array(got_few), np.array(want_few), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(trained), np.array(want), rtol=1e-5, atol=1e-5)


def test_packed_weights_follow_their_layers(cpu_config, amx):
    conv, weights = _bfloat16_layer(nn.Conv1d(8, 16, 3, padding=1), amx, cpu_config)
    first = weights.arrays[""]
    weights.refresh(conv)
    assert weights.arrays[""] is first  # unchanged weight: no repacking
    conv.weight = conv.weight * 2
    weights.refresh(conv)
    np.testing.assert_array_equal(
        np.array(weights.arrays[""].astype(mx.float32)),
        np.array(amx_conv1d.pack_weight(conv.weight).astype(mx.float32)),
    )


def test_amx_status_says_whether_the_kernel_runs(amx):
    assert extension.amx_status(amx, "") == "yes"
    assert extension.amx_status(_with(amx, amx=False), "").startswith(
        "no: this CPU or OS has no AMX"
    )
    assert extension.amx_status(None, "off").startswith("no: the extension is not in use (off)")


def test_bfloat16_without_amx_stays_float32_and_says_so(caplog, amx):
    with caplog.at_level("WARNING", logger=settings.__name__):
        dtype = settings.usable_weights("bfloat16", True, _with(amx, amx=False), "")
    assert dtype == mx.float32
    assert [r.getMessage() for r in caplog.records] == [
        "accel.cpu_weights=bfloat16 has no effect, sampling stays float32: this CPU or OS has "
        "no AMX with bfloat16 (Sapphire Rapids or later)"
    ]
