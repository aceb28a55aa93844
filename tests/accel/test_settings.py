"""``accel.configure``: the settings it reads (config group, environment overrides, errors) and
what ``accel.apply`` then puts into a policy."""

import subprocess
import sys

from diffusion_policy_mlx.accel import settings
from diffusion_policy_mlx.accel.conv1d import CpuConv1d
from diffusion_policy_mlx.accel.cpu_streams import CpuStreams
from diffusion_policy_mlx.accel.low_precision import SamplingWeights

import mlx.core as mx
import pytest

from diffusion_policy_mlx import accel
from diffusion_policy_mlx.config_compat import ConfigError
from diffusion_policy_mlx.model.diffusion.conditional_unet1d import ConditionalUnet1D
from diffusion_policy_mlx.policy.diffusion_unet_lowdim_policy import DiffusionUnetLowdimPolicy
from diffusion_policy_mlx.schedulers import DDPMScheduler


@pytest.fixture
def restore():
    """Put the session's settings back after a test that calls configure."""
    before = accel.current()
    yield
    accel.configure("cpu" if before.on_cpu else "gpu")


def test_defaults_and_the_config_group():
    assert settings.settings(None, {}) == settings.DEFAULTS
    values = settings.settings({"cpu_streams": 3, "cpu_weights": "Float16"}, {})
    assert values["cpu_streams"] == 3 and values["cpu_weights"] == "float16"


def test_environment_variables_override_the_config():
    values = settings.settings(
        {"cpu_kernels": True, "cpu_weights": "float32", "fused_group_norm": True},
        {
            "DP_MLX_CPU_KERNELS": "off",
            "DP_MLX_CPU_WEIGHTS": "bfloat16",
            "DP_MLX_FUSED_GROUP_NORM": "0",
        },
    )
    assert values["cpu_kernels"] is False
    assert values["cpu_weights"] == "bfloat16"
    assert values["fused_group_norm"] is False


@pytest.mark.parametrize(
    "cfg, environ, message",
    [
        ({"cpu_weigths": "float16"}, {}, "accel: unknown settings ['cpu_weigths']"),
        ({"cpu_weights": "int8"}, {}, "accel.cpu_weights='int8': give one of"),
        ({}, {"DP_MLX_CPU_WEIGHTS": "int8"}, "DP_MLX_CPU_WEIGHTS='int8': give one of"),
        ({"cpu_kernels": "maybe"}, {}, "accel.cpu_kernels='maybe': give true or false"),
    ],
)
def test_bad_settings_name_the_key_or_variable(cfg, environ, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        settings.settings(cfg, environ)


def test_configure_decides_device_streams_and_kernels(restore):
    config = accel.configure("cpu", {"cpu_streams": 3}, environ={})
    assert accel.current() is config
    assert config.on_cpu and mx.default_device() == mx.cpu
    assert config.cpu_streams == 3 and not config.fused_group_norm
    off = accel.configure("cpu", {"cpu_kernels": False}, environ={})
    assert off.kernels is None and "turned off" in off.kernel_status
    # float16 weights without the extension: float32, as the warning says
    assert off.cpu_weights == mx.float32
    with pytest.raises(ConfigError, match="training.device='tpu'"):
        accel.configure("tpu")


def test_apply_swaps_layers_and_gives_a_policy_its_execution(cpu_config):
    policy = DiffusionUnetLowdimPolicy(
        ConditionalUnet1D(2, global_cond_dim=8, down_dims=[8, 16], n_groups=4),
        DDPMScheduler(num_train_timesteps=10),
        horizon=8,
        obs_dim=4,
        action_dim=2,
        n_action_steps=4,
        n_obs_steps=2,
        obs_as_global_cond=True,
    )
    assert policy.sampling_weights is None and policy.batch_split.map_chunks(len, [1]) is None
    same = accel.apply(policy, cpu_config(cpu_streams=2, cpu_weights=mx.float16))
    assert same is policy
    assert isinstance(policy.model.final_conv[1], CpuConv1d)
    assert isinstance(policy.batch_split, CpuStreams) and policy.batch_split.count == 2
    assert isinstance(policy.sampling_weights, SamplingWeights)
    assert policy.sampling_weights.dtype == mx.float16


def test_without_configure_nothing_is_chosen():
    code = (
        "import diffusion_policy_mlx.accel as accel, mlx.nn as nn; "
        "conv = nn.Conv1d(2, 2, 3, padding=1); "
        "assert accel.current() is None and accel.apply(conv) is conv"
    )
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True)


def test_status_names_the_blas_and_kernels():
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "diffusion_policy_mlx.accel"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("BLAS: ") and "few-row CPU kernel: " in out
