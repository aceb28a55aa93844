"""accel.swap_layers reaches every layer a model holds, whatever container holds it."""

from diffusion_policy_mlx.accel.max_pool import CpuMaxPool2d
from diffusion_policy_mlx.accel.strided_conv import CpuStridedConv2d

import mlx.core as mx
import mlx.nn as nn
import pytest

from diffusion_policy_mlx import accel
from diffusion_policy_mlx.model.vision.resnet import MaxPool2d
from diffusion_policy_mlx.policy.diffusion_unet_hybrid_image_policy import (
    DiffusionUnetHybridImagePolicy,
)
from diffusion_policy_mlx.schedulers import DDPMScheduler

pytestmark = pytest.mark.usefixtures("cpu_device")


class Holder(nn.Module):
    """Children in a dict (as an obs encoder keeps its per-key networks) and in a list."""

    def __init__(self):
        super().__init__()
        self.nets = {"image": [nn.Conv2d(3, 4, 3, stride=2), MaxPool2d(3, stride=2)]}
        self.head = [{"pool": MaxPool2d(2, stride=2)}]


def test_layers_in_dicts_and_lists_are_swapped(cpu_config):
    model = accel.swap_layers(Holder(), cpu_config())
    conv, pool = model.nets["image"]
    assert type(conv) is CpuStridedConv2d and type(pool) is CpuMaxPool2d
    assert type(model.head[0]["pool"]) is CpuMaxPool2d
    # and back to the plain layers under settings without a fast path for them (a GPU's)
    model = accel.swap_layers(model, cpu_config(device=mx.Device(mx.gpu)))
    assert type(model.nets["image"][0]) is nn.Conv2d
    assert type(model.head[0]["pool"]) is MaxPool2d


def test_the_hybrid_policys_resnet_is_swapped(cpu_config):
    shape_meta = {
        "obs": {
            "image": {"shape": [3, 32, 32], "type": "rgb"},
            "agent_pos": {"shape": [2], "type": "low_dim"},
        },
        "action": {"shape": [2]},
    }
    policy = DiffusionUnetHybridImagePolicy(
        shape_meta,
        DDPMScheduler(num_train_timesteps=10),
        horizon=8,
        n_action_steps=4,
        n_obs_steps=2,
        crop_shape=(28, 28),
        obs_encoder_group_norm=True,
        diffusion_step_embed_dim=16,
        down_dims=(16, 32),
        kernel_size=3,
        n_groups=4,
    )
    accel.apply(policy, cpu_config())
    types = [type(m) for _, m in policy.named_modules()]
    strided = [
        m for _, m in policy.named_modules() if isinstance(m, nn.Conv2d) and max(m.stride) > 1
    ]
    assert strided and all(type(m) is CpuStridedConv2d for m in strided)
    assert CpuMaxPool2d in types and MaxPool2d not in types
