"""The CPU max pool against MLX's pool, and the ResNet it is swapped into."""

import copy

from diffusion_policy_mlx.accel.max_pool import CpuMaxPool2d
from diffusion_policy_mlx.accel.strided_conv import CpuStridedConv2d

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from diffusion_policy_mlx import accel
from diffusion_policy_mlx.model.vision.resnet import MaxPool2d, resnet18

# accel's CPU machinery against MLX on the CPU, also where a GPU is the default device
pytestmark = pytest.mark.usefixtures("cpu_device")


@pytest.mark.parametrize("height, width", [(42, 42), (21, 20), (5, 7)])
def test_maxpool_matches_mlx_pool_in_values_and_gradients(height, width, cpu_config):
    # a running maximum of strided slices; without ties it is MLX's pool
    x = mx.random.normal((2, height, width, 3), key=mx.random.key(height))
    ours = accel.swap_layers(MaxPool2d(3, stride=2, padding=1), cpu_config())
    assert isinstance(ours, CpuMaxPool2d)
    reference = nn.MaxPool2d(3, stride=2, padding=1)
    np.testing.assert_array_equal(np.array(ours(x)), np.array(reference(x)))
    grad_ours = mx.grad(lambda x: (ours(x) ** 2).sum())(x)
    grad_reference = mx.grad(lambda x: (reference(x) ** 2).sum())(x)
    np.testing.assert_array_equal(np.array(grad_ours), np.array(grad_reference))


def test_swapped_resnet_computes_the_same_and_copies(cpu_config):
    model = resnet18()
    x = mx.random.normal((2, 40, 40, 3), key=mx.random.key(0))
    want = model(x)
    fast = accel.swap_layers(copy.deepcopy(model), cpu_config())
    assert isinstance(fast.maxpool, CpuMaxPool2d) and isinstance(fast.conv1, CpuStridedConv2d)
    np.testing.assert_allclose(np.array(fast(x)), np.array(want), rtol=1e-5, atol=1e-5)
    assert isinstance(copy.deepcopy(fast).maxpool, CpuMaxPool2d)
