"""The CPU input gradient of strided convolutions against MLX's own, a hand-derived case, and
the convolutions accel swaps it into."""

from diffusion_policy_mlx.accel.strided_conv import CpuStridedConv2d, strided_conv2d_input_grad

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from diffusion_policy_mlx import accel

# accel's CPU machinery against MLX on the CPU, also where a GPU is the default device
pytestmark = pytest.mark.usefixtures("cpu_device")


def _value_and_grads(layer: nn.Module, x: mx.array):
    def loss(params, x):
        layer.update(params)
        return (layer(x) ** 3).sum()

    return mx.value_and_grad(loss, argnums=(0, 1))(layer.trainable_parameters(), x)


@pytest.mark.parametrize(
    "height, width, kernel, stride, padding",
    [
        (9, 8, 3, 2, 1),  # ResNet's 3x3 stride-2 layers, odd and even sizes
        (21, 21, 1, 2, 0),  # the 1x1 stride-2 downsample branch
        (20, 20, 7, 2, 3),  # the 7x7 stem
        (10, 11, 3, 3, 1),  # stride 3: rows of the input no output reads
    ],
)
def test_values_and_gradients_match_mx_conv2d(height, width, kernel, stride, padding):
    mx.random.seed(0)
    reference = nn.Conv2d(3, 5, kernel, stride=stride, padding=padding)
    ours = CpuStridedConv2d(3, 5, kernel, stride=stride, padding=padding)
    ours.update(reference.parameters())
    x = mx.random.normal((2, height, width, 3))
    (value, (g_params, g_x)) = _value_and_grads(ours, x)
    (ref_value, (r_params, r_x)) = _value_and_grads(reference, x)
    np.testing.assert_allclose(value.item(), ref_value.item(), rtol=1e-6)
    np.testing.assert_allclose(np.array(g_x), np.array(r_x), rtol=1e-5, atol=1e-5)
    for key in ("weight", "bias"):
        np.testing.assert_allclose(np.array(g_params[key]), np.array(r_params[key]), atol=1e-4)


def test_input_grad_hand_derived():
    # 1x4 input, 1x2 kernel [a, b] = [2, 3], stride 2, no padding: y0 = 2 x0 + 3 x1 and
    # y1 = 2 x2 + 3 x3, so with dy = [1, 10] the input gradient is [2, 3, 20, 30].
    weight = mx.array([2.0, 3.0]).reshape(1, 1, 2, 1)
    dy = mx.array([1.0, 10.0]).reshape(1, 1, 2, 1)
    dx = strided_conv2d_input_grad(dy, weight, (1, 1, 4, 1), (1, 2), (0, 0))
    np.testing.assert_allclose(np.array(dx).ravel(), [2, 3, 20, 30])


def test_only_strided_convolutions_are_swapped_on_the_cpu(cpu_config):
    config = cpu_config()
    assert isinstance(accel.swap_layers(nn.Conv2d(2, 4, 3, stride=2), config), CpuStridedConv2d)
    assert type(accel.swap_layers(nn.Conv2d(2, 4, 3, padding=1), config)) is nn.Conv2d
    on_gpu = cpu_config(device=mx.Device(mx.gpu))
    assert type(accel.swap_layers(nn.Conv2d(2, 4, 3, stride=2), on_gpu)) is nn.Conv2d
