"""The few-row CPU kernel against numpy's products, its gradients against MLX's, the rules that
decide when it is used, and the float16 sampling weights it reads."""

import copy
import platform
import re
import sys
from types import SimpleNamespace

from diffusion_policy_mlx.accel import cpu_streams, extension, few_row_matmul
from diffusion_policy_mlx.accel.cpu_streams import CpuStreams
from diffusion_policy_mlx.accel.low_precision import SamplingWeights

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from diffusion_policy_mlx import accel

# accel's CPU machinery against MLX on the CPU, also where a GPU is the default device
pytestmark = pytest.mark.usefixtures("cpu_device")


RNG = np.random.default_rng(0)


def _randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def test_the_extension_is_built_on_linux_x86_64(request):
    if not (sys.platform == "linux" and platform.machine() == "x86_64"):
        pytest.skip("the CPU kernel is built on Linux x86_64 only")
    request.getfixturevalue("cpu_kernels")  # fails under DP_MLX_REQUIRE_CPU_KERNELS if unbuilt


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [mx.float32, mx.float16])
@pytest.mark.parametrize(
    "rows, k, n",
    # every row-group size (1-4, then groups of 4 plus a tail), vector tails of K (10, 37: no
    # full AVX-512 vector / one and a tail), weight-row tails (N % 4) and a U-Net layer's size
    [
        (1, 10, 7),
        (2, 37, 13),
        (3, 64, 4),
        (4, 5120, 1024),
        (5, 100, 9),
        (8, 2560, 130),
        (16, 80, 33),
    ],
)
def test_kernel_is_x_times_w_transposed(rows, k, n, dtype, threads, cpu_kernels):
    x, w = _randn(rows, k), _randn(n, k)
    w_mx = mx.array(w).astype(dtype)
    got = cpu_kernels.few_row_matmul(mx.array(x), w_mx, threads=threads)
    # the weights as the kernel reads them: float16 rounding happens before the product
    want = x.astype(np.float64) @ np.array(w_mx.astype(mx.float32)).astype(np.float64).T
    assert got.dtype == mx.float32 and got.shape == (rows, n)
    np.testing.assert_allclose(np.array(got), want, rtol=1e-5, atol=2e-5 * np.sqrt(k))


def test_kernel_reads_strided_inputs_and_runs_compiled(cpu_kernels):
    x = mx.array(_randn(6, 40))[::2]  # (3, 40), not row-contiguous
    w = mx.array(_randn(40, 9)).T  # (9, 40), a transposed view
    want = np.array(x) @ np.array(w).T
    np.testing.assert_allclose(
        np.array(cpu_kernels.few_row_matmul(x, w)), want, rtol=1e-5, atol=1e-5
    )
    compiled = mx.compile(lambda x, w: cpu_kernels.few_row_matmul(x, w, threads=2) * 2.0)
    np.testing.assert_allclose(np.array(compiled(x, w)), 2 * want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16])
def test_kernel_gradients_are_those_of_the_product(dtype, cpu_kernels):
    x, w = mx.array(_randn(4, 24)), mx.array(_randn(12, 24)).astype(dtype)
    cotangent = mx.array(_randn(4, 12))
    (_, got) = mx.vjp(lambda x, w: [cpu_kernels.few_row_matmul(x, w)], [x, w], [cotangent])
    assert got[1].dtype == dtype
    dy, xs, ws = (np.array(a.astype(mx.float32)) for a in (cotangent, x, w))
    np.testing.assert_allclose(np.array(got[0]), dy @ ws, rtol=1e-5, atol=1e-5)
    tolerance = 1e-5 if dtype == mx.float32 else 1e-2
    np.testing.assert_allclose(
        np.array(got[1].astype(mx.float32)), dy.T @ xs, rtol=tolerance, atol=tolerance
    )


@pytest.mark.parametrize(
    "x_shape, w_shape, dtype, message",
    [
        ((17, 8), (4, 8), mx.float32, "at most 16 rows"),
        ((2, 8), (4, 9), mx.float32, "expects x (M, K) and w (N, K)"),
        ((2, 8), (4, 8), mx.bfloat16, "w must be float32 or float16"),
    ],
)
def test_kernel_refuses_what_it_cannot_compute(x_shape, w_shape, dtype, message, cpu_kernels):
    x, w = mx.zeros(x_shape), mx.zeros(w_shape, dtype)
    with pytest.raises(ValueError, match=re.escape(message)):
        cpu_kernels.few_row_matmul(x, w)


def test_matmul_wt_takes_the_kernel_for_few_rows_only(cpu_kernels):
    calls = []

    def spy(x, w, threads):
        calls.append((x.shape, threads))
        return cpu_kernels.few_row_matmul(x, w, threads=threads)

    kernels = SimpleNamespace(few_row_matmul=spy)
    w = mx.array(_randn(6, 8))
    few, many = mx.array(_randn(2, 8, 8)), mx.array(_randn(3, 6, 8))  # 16 and 18 rows
    with mx.stream(mx.cpu):
        got_few = few_row_matmul.matmul_wt(few, w, kernels)
        got_many = few_row_matmul.matmul_wt(many, w, kernels)
        assert calls == [((16, 8), cpu_streams.available_cores())]
        assert got_few.shape == (2, 8, 6)
        np.testing.assert_allclose(np.array(got_few), np.array(few @ w.T), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.array(got_many), np.array(many @ w.T), rtol=1e-6)
        few_row_matmul.matmul_wt(few, w, None)  # no extension: MLX's product
    assert len(calls) == 1


def test_matmul_wt_gives_each_cpu_stream_its_share_of_the_cores(monkeypatch, cpu_kernels):
    """Inside a batch split, each chunk's products get cores // chunks threads."""
    seen = []

    def spy(x, w, threads):
        seen.append(threads)
        return cpu_kernels.few_row_matmul(x, w, threads=threads)

    kernels = SimpleNamespace(few_row_matmul=spy)
    monkeypatch.setattr(cpu_streams, "available_cores", lambda: 4)
    w = mx.array(_randn(5, 3))
    x = mx.array(_randn(4, 2, 3))
    with mx.stream(mx.cpu):
        parts = CpuStreams(2).map_chunks(lambda rows: few_row_matmul.matmul_wt(rows, w, kernels), x)
    assert seen == [2, 2]
    got = np.concatenate([np.array(part) for _, part in parts])
    np.testing.assert_allclose(got, np.array(x @ w.T), rtol=1e-5, atol=1e-5)


def test_a_kernel_built_for_another_mlx_is_not_used(monkeypatch):
    stale = SimpleNamespace(mlx_version="0.0.1", isa="avx512")
    monkeypatch.setattr(extension.importlib, "import_module", lambda name: stale)
    module, status = extension.load.__wrapped__()
    assert module is None
    assert f"built against MLX 0.0.1 but MLX {mx.__version__} is installed" in status
    assert "pip install -e ." in status


class _Convs(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = [
            nn.Conv1d(3, 4, 5, padding=2),
            nn.ConvTranspose1d(4, 4, 4, stride=2, padding=1),
        ]
        self.head = nn.Linear(4, 2)


def test_sampling_weights_are_float16_copies_that_follow_their_layers(cpu_config, cpu_kernels):
    model = accel.swap_layers(_Convs(), cpu_config(cpu_kernels))
    weights = SamplingWeights(mx.float16)
    weights.refresh(model)
    assert set(weights.arrays) == {"layers.0", "layers.1"}
    assert [m.weights_key for m in model.layers] == ["layers.0", "layers.1"]
    first = weights.arrays["layers.0"]
    np.testing.assert_array_equal(
        np.array(first), np.array(model.layers[0].weight.astype(mx.float16))
    )
    weights.refresh(model)
    assert weights.arrays["layers.0"] is first  # unchanged weight: no new copy
    model.layers[0].weight = model.layers[0].weight * 2
    weights.refresh(model)
    np.testing.assert_array_equal(
        np.array(weights.arrays["layers.0"]),
        np.array(model.layers[0].weight.astype(mx.float16)),
    )
    assert weights.signature == ("mlx.core.float16", 2)
    # a copied policy (the EMA) refreshes copies of its own layers
    assert copy.deepcopy(weights).arrays == {}


def test_weight_for_returns_the_copy_only_where_the_kernel_reads_it(cpu_config, cpu_kernels):
    model = accel.swap_layers(_Convs(), cpu_config(cpu_kernels))
    model.eval()
    weights = SamplingWeights(mx.float16)
    weights.refresh(model)
    conv = model.layers[0]
    assert conv.weight_for(4) is conv.weight  # no copies in use
    with weights.active():
        assert conv.weight_for(4).dtype == mx.float16
        assert conv.weight_for(few_row_matmul.MAX_ROWS + 1) is conv.weight
        conv.train()
        assert conv.weight_for(4) is conv.weight
        conv.eval()
    assert conv.weight_for(4) is conv.weight


def _numpy_same_conv(x, w, bias):
    """conv1d with 'same' zero padding in float64: x (B, T, C), w (N, K, C) -> (B, T, N)."""
    batch, length, _ = x.shape
    kernel = w.shape[1]
    padded = np.pad(x, [(0, 0), (kernel // 2, kernel // 2), (0, 0)])
    y = np.zeros((batch, length, w.shape[0]))
    for k in range(kernel):
        y += padded[:, k : k + length] @ w[:, k].T
    return y + bias


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [mx.float32, mx.float16])
@pytest.mark.parametrize(
    "batch, length, c_in, c_out, kernel",
    # the U-Net's batch-1 levels, a batch of 2, a 1x1 convolution, the 2-channel input layer and
    # horizons shorter than the kernel (taps that read only padding)
    [
        (1, 4, 1024, 256, 5),
        (1, 16, 256, 68, 5),
        (2, 8, 64, 36, 5),
        (3, 4, 40, 24, 1),
        (1, 16, 2, 256, 5),
        (1, 2, 16, 8, 5),
        (1, 1, 16, 8, 3),
    ],
)
def test_conv1d_kernel_is_the_same_padded_convolution(
    batch, length, c_in, c_out, kernel, dtype, threads, cpu_kernels
):
    x, w, bias = _randn(batch, length, c_in), _randn(c_out, kernel, c_in), _randn(c_out)
    w_mx = mx.array(w).astype(dtype)
    got = cpu_kernels.few_row_conv1d(mx.array(x), w_mx, mx.array(bias), threads=threads)
    want = _numpy_same_conv(
        x.astype(np.float64), np.array(w_mx.astype(mx.float32)).astype(np.float64), bias
    )
    assert got.dtype == mx.float32 and got.shape == (batch, length, c_out)
    np.testing.assert_allclose(np.array(got), want, rtol=1e-5, atol=2e-5 * np.sqrt(kernel * c_in))


def test_conv1d_kernel_gradients_are_those_of_mlx_conv1d(cpu_kernels):
    x, w, bias = (mx.array(a) for a in (_randn(2, 4, 16), _randn(8, 5, 16), _randn(8)))
    dy = mx.array(_randn(2, 4, 8))
    got = mx.vjp(lambda *a: cpu_kernels.few_row_conv1d(*a), [x, w, bias], [dy])[1]
    want = mx.vjp(lambda x, w, b: mx.conv1d(x, w, padding=2) + b, [x, w, bias], [dy])[1]
    for g, e in zip(got, want, strict=True):
        np.testing.assert_allclose(np.array(g), np.array(e), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "x_shape, w_shape, b_shape, message",
    [
        ((1, 17, 8), (4, 5, 8), (4,), "at most 16 rows (B * T)"),
        ((1, 4, 8), (4, 4, 8), (4,), "kernel size must be odd"),
        ((1, 4, 8), (4, 5, 9), (4,), "expects x (B, T, C_in) and w (C_out, K, C_in)"),
        ((1, 4, 8), (4, 5, 8), (3,), "bias must be (C_out,)"),
    ],
)
def test_conv1d_kernel_refuses_what_it_cannot_compute(
    x_shape, w_shape, b_shape, message, cpu_kernels
):
    with pytest.raises(ValueError, match=re.escape(message)):
        cpu_kernels.few_row_conv1d(mx.zeros(x_shape), mx.zeros(w_shape), mx.zeros(b_shape))


def test_few_row_convolutions_take_the_conv_kernel_in_eval_mode_only(cpu_config, cpu_kernels):
    calls = []

    def spy(x, w, bias, threads):
        calls.append(x.shape)
        return cpu_kernels.few_row_conv1d(x, w, bias, threads=threads)

    conv = nn.Conv1d(16, 8, 5, padding=2)
    x = mx.array(_randn(1, 4, 16))
    with mx.stream(mx.cpu):
        want = conv(x)
        fast = accel.swap_layers(conv, cpu_config(SimpleNamespace(few_row_conv1d=spy)))
        fast.eval()
        got = fast(x)
        fast.train()  # training keeps MLX's products
        fast(x)
    assert calls == [(1, 4, 16)]
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=1e-5)
