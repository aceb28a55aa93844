"""The few-row CPU kernel against numpy's products, its gradients against MLX's, and the rules
that decide when it is used."""

import platform
import re
import sys
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from diffusion_policy_mlx.accel import cpu_streams, few_row_matmul

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


def test_matmul_wt_takes_the_kernel_for_few_rows_only(monkeypatch, cpu_kernels):
    calls = []

    def spy(x, w, threads):
        calls.append((x.shape, threads))
        return cpu_kernels.few_row_matmul(x, w, threads=threads)

    monkeypatch.setattr(few_row_matmul, "_kernels", SimpleNamespace(few_row_matmul=spy))
    layer = nn.Linear(8, 6)
    layer.eval()
    w = layer.weight
    few, many = mx.array(_randn(2, 8, 8)), mx.array(_randn(3, 6, 8))  # 16 and 18 rows
    with mx.stream(mx.cpu):
        got_few = few_row_matmul.matmul_wt(few, w, layer)
        got_many = few_row_matmul.matmul_wt(many, w, layer)
        assert calls == [((16, 8), cpu_streams.available_cores())]
        assert got_few.shape == (2, 8, 6)
        np.testing.assert_allclose(np.array(got_few), np.array(few @ w.T), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.array(got_many), np.array(many @ w.T), rtol=1e-6)
        layer.train()  # training keeps MLX's product
        few_row_matmul.matmul_wt(few, w, layer)
        layer.eval()
        monkeypatch.setattr(few_row_matmul, "ENABLED", False)
        few_row_matmul.matmul_wt(few, w, layer)
    assert len(calls) == 1


def test_matmul_wt_gives_each_cpu_stream_its_share_of_the_cores(monkeypatch, cpu_kernels):
    """Inside a batch split, each chunk's products get cores // chunks threads."""
    seen = []

    def spy(x, w, threads):
        seen.append(threads)
        return cpu_kernels.few_row_matmul(x, w, threads=threads)

    monkeypatch.setattr(few_row_matmul, "_kernels", SimpleNamespace(few_row_matmul=spy))
    monkeypatch.setattr(cpu_streams, "available_cores", lambda: 4)
    cpu_streams.set_cpu_streams(2)
    try:
        layer = nn.Linear(3, 5)
        layer.eval()
        w = layer.weight
        x = mx.array(_randn(4, 2, 3))
        with mx.stream(mx.cpu):
            parts = cpu_streams.map_chunks(lambda rows: few_row_matmul.matmul_wt(rows, w, layer), x)
    finally:
        cpu_streams.set_cpu_streams(None)
    assert seen == [2, 2]
    got = np.concatenate([np.array(part) for _, part in parts])
    np.testing.assert_allclose(got, np.array(x @ w.T), rtol=1e-5, atol=1e-5)


def test_a_kernel_built_for_another_mlx_is_not_used(monkeypatch):
    stale = SimpleNamespace(mlx_version="0.0.1", isa="avx512")
    monkeypatch.setattr(few_row_matmul.importlib, "import_module", lambda name: stale)
    module, status = few_row_matmul._load()
    assert module is None
    assert f"built against MLX 0.0.1 but MLX {mx.__version__} is installed" in status
    assert "pip install -e ." in status


def test_the_environment_variable_turns_the_kernel_off(monkeypatch):
    monkeypatch.setenv(few_row_matmul.ENV_VAR, "off")
    module, status = few_row_matmul._load()
    assert module is None and status == f"disabled by {few_row_matmul.ENV_VAR}=off"


class _Convs(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = [nn.Conv1d(3, 4, 5, padding=2), nn.ConvTranspose1d(4, 4, 4, stride=2)]
        self.head = nn.Linear(4, 2)


def test_inference_weights_are_float16_copies_that_follow_their_modules(monkeypatch, cpu_kernels):
    monkeypatch.setenv(few_row_matmul.WEIGHTS_VAR, "float16")
    model, weights = _Convs(), few_row_matmul.InferenceWeights()
    weights.refresh(model)
    convs = model.layers
    assert set(weights.arrays) == {str(id(m)) for m in convs}  # not the Linear
    for m in convs:
        copy16 = weights.arrays[str(id(m))]
        assert copy16.dtype == mx.float16
        np.testing.assert_array_equal(np.array(copy16), np.array(m.weight.astype(mx.float16)))
    kept = dict(weights.arrays)
    arrays = weights.arrays
    convs[0].weight = convs[0].weight * 2  # what an optimizer or EMA update does
    weights.refresh(model)
    assert weights.arrays is arrays, "updated in place: compiled steps hold this dict"
    assert weights.arrays[str(id(convs[1]))] is kept[str(id(convs[1]))]
    np.testing.assert_array_equal(
        np.array(weights.arrays[str(id(convs[0]))]), np.array(convs[0].weight.astype(mx.float16))
    )
    monkeypatch.setenv(few_row_matmul.WEIGHTS_VAR, "float32")
    weights.refresh(model)
    assert weights.arrays == {}


def test_weight_for_returns_the_copy_only_where_the_kernel_reads_it(monkeypatch, cpu_kernels):
    monkeypatch.setenv(few_row_matmul.WEIGHTS_VAR, "float16")
    model, weights = _Convs(), few_row_matmul.InferenceWeights()
    model.eval()
    weights.refresh(model)
    conv = model.layers[0]
    with mx.stream(mx.cpu):
        assert few_row_matmul.weight_for(conv, 4) is conv.weight  # no copies in use
        with few_row_matmul.using(weights):
            assert few_row_matmul.weight_for(conv, 4).dtype == mx.float16
            assert few_row_matmul.weight_for(conv, few_row_matmul.MAX_ROWS + 1) is conv.weight
            conv.train()
            assert few_row_matmul.weight_for(conv, 4) is conv.weight
            conv.eval()
        assert few_row_matmul.weight_for(conv, 4) is conv.weight


def test_a_bad_weight_dtype_names_the_variable(monkeypatch):
    monkeypatch.setenv(few_row_matmul.WEIGHTS_VAR, "int8")
    with pytest.raises(ValueError, match="DP_MLX_CPU_WEIGHTS='int8': give one of"):
        few_row_matmul.weight_dtype()


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


def test_few_row_convolutions_take_the_conv_kernel_in_eval_mode_only(monkeypatch, cpu_kernels):
    from diffusion_policy_mlx.model.diffusion.conv1d_components import conv1d

    calls = []

    def spy(x, w, bias, threads):
        calls.append(x.shape)
        return cpu_kernels.few_row_conv1d(x, w, bias, threads=threads)

    monkeypatch.setattr(few_row_matmul, "_kernels", SimpleNamespace(few_row_conv1d=spy))
    conv = nn.Conv1d(16, 8, 5, padding=2)
    x = mx.array(_randn(1, 4, 16))
    with mx.stream(mx.cpu):
        want = conv(x)
        conv.eval()
        got = conv1d(conv, x)
        conv.train()  # training keeps MLX's products
        conv1d(conv, x)
    assert calls == [(1, 4, 16)]
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=1e-5)
