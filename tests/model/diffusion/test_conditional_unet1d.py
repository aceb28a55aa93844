"""ConditionalUnet1D against upstream's outputs and per-block activations."""

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map
from safetensors.numpy import load_file

from diffusion_policy_mlx.common.upstream import load_upstream_state_dict
from diffusion_policy_mlx.model.diffusion.conditional_unet1d import (
    ConditionalResidualBlock1D,
    ConditionalUnet1D,
)

TOL = {"atol": 1e-5, "rtol": 1e-4}
NAMES = ["unet_global", "unet_local", "unet_nocond"]


def load_fixture(fixtures_dir, name):
    tensors = load_file(fixtures_dir / f"{name}.safetensors")
    kwargs = json.loads((fixtures_dir / f"{name}.json").read_text())["constructor_kwargs"]
    model = ConditionalUnet1D(**kwargs)
    state_dict = {
        k.removeprefix("state_dict."): v for k, v in tensors.items() if k.startswith("state_dict.")
    }
    load_upstream_state_dict(model, state_dict)
    return model, tensors


def cond_kwargs(t):
    kwargs = {}
    if "input.global_cond" in t:
        kwargs["global_cond"] = mx.array(t["input.global_cond"])
    if "input.local_cond" in t:
        kwargs["local_cond"] = mx.array(t["input.local_cond"])
    return kwargs


def channels_last(a: np.ndarray) -> mx.array:
    """Fixture activations are channels-first (B, C, T)."""
    return mx.array(a.transpose(0, 2, 1))


def assert_matches(actual: mx.array, expected_cf: np.ndarray):
    np.testing.assert_allclose(np.array(actual).transpose(0, 2, 1), expected_cf, **TOL)


@pytest.mark.parametrize("name", NAMES)
def test_prediction_matches_upstream(fixtures_dir, name):
    model, t = load_fixture(fixtures_dir, name)
    out = model(mx.array(t["input.sample"]), mx.array(t["input.timestep"]), **cond_kwargs(t))
    assert out.shape == t["output.prediction"].shape
    np.testing.assert_allclose(np.array(out), t["output.prediction"], **TOL)


def test_scalar_timestep_broadcasts(fixtures_dir):
    model, t = load_fixture(fixtures_dir, "unet_global")
    expected = t["output.prediction_scalar_timestep_17"]
    for timestep in (17, mx.array(17), mx.array([17])):
        out = model(mx.array(t["input.sample"]), timestep, **cond_kwargs(t))
        np.testing.assert_allclose(np.array(out), expected, **TOL)


@pytest.mark.parametrize("name", NAMES)
def test_every_block_matches_upstream(fixtures_dir, name):
    """Feed each block upstream's own input activation and compare with its output."""
    model, t = load_fixture(fixtures_dir, name)
    act = {
        k.removeprefix("intermediate."): v for k, v in t.items() if k.startswith("intermediate.")
    }
    timestep = mx.array(t["input.timestep"])

    np.testing.assert_allclose(
        np.array(model.diffusion_step_encoder[0](timestep)), act["diffusion_step_encoder.0"], **TOL
    )
    time_feature = model.encode_timestep(timestep, 3)
    np.testing.assert_allclose(np.array(time_feature), act["diffusion_step_encoder"], **TOL)
    # Condition from upstream's activation, so errors do not compound from block to block.
    cond = mx.array(act["diffusion_step_encoder"])
    if "input.global_cond" in t:
        cond = mx.concatenate([cond, mx.array(t["input.global_cond"])], axis=-1)

    h_local = None
    if "input.local_cond" in t:
        local_cond = mx.array(t["input.local_cond"])
        for i in range(2):
            h = model.local_cond_encoder[i](local_cond, cond)
            assert_matches(h, act[f"local_cond_encoder.{i}"])
        h_local = channels_last(act["local_cond_encoder.0"])

    n = len(model.down_modules)
    x = mx.array(t["input.sample"])
    for i, (resnet, resnet2, downsample) in enumerate(model.down_modules):
        assert_matches(resnet(x, cond), act[f"down_modules.{i}.0"])
        x = channels_last(act[f"down_modules.{i}.0"])
        if i == 0 and h_local is not None:
            x = x + h_local
        assert_matches(resnet2(x, cond), act[f"down_modules.{i}.1"])
        assert_matches(
            downsample(channels_last(act[f"down_modules.{i}.1"])), act[f"down_modules.{i}.2"]
        )
        x = channels_last(act[f"down_modules.{i}.2"])

    for i, mid in enumerate(model.mid_modules):
        assert_matches(mid(x, cond), act[f"mid_modules.{i}"])
        x = channels_last(act[f"mid_modules.{i}"])

    for j, (resnet, resnet2, upsample) in enumerate(model.up_modules):
        skip = channels_last(act[f"down_modules.{n - 1 - j}.1"])
        assert_matches(resnet(mx.concatenate([x, skip], axis=-1), cond), act[f"up_modules.{j}.0"])
        assert_matches(
            resnet2(channels_last(act[f"up_modules.{j}.0"]), cond), act[f"up_modules.{j}.1"]
        )
        assert_matches(upsample(channels_last(act[f"up_modules.{j}.1"])), act[f"up_modules.{j}.2"])
        x = channels_last(act[f"up_modules.{j}.2"])

    for layer in model.final_conv:
        x = layer(x)
    assert_matches(x, act["final_conv"])


def test_local_cond_quirk_second_encoder_unused_and_frozen(fixtures_dir):
    model, t = load_fixture(fixtures_dir, "unet_local")
    sample, timestep = mx.array(t["input.sample"]), mx.array(t["input.timestep"])
    before = model(sample, timestep, **cond_kwargs(t))
    # Upstream's up path never adds local_cond_encoder.1: scrambling it changes nothing ...
    unused = model.local_cond_encoder[1]
    unused.update(tree_map(mx.ones_like, unused.parameters()))
    np.testing.assert_array_equal(
        np.array(model(sample, timestep, **cond_kwargs(t))), np.array(before)
    )
    # ... while local_cond itself does matter (through local_cond_encoder.0).
    other = model(sample, timestep, local_cond=mx.zeros_like(mx.array(t["input.local_cond"])))
    assert np.abs(np.array(other) - np.array(before)).max() > 1e-3
    # Never trained, as in upstream where it gets no gradient, but still saved and loaded.
    trainable = {k for k, _ in tree_flatten(model.trainable_parameters())}
    everything = {k for k, _ in tree_flatten(model.parameters())}
    frozen = everything - trainable
    assert frozen and all(k.startswith("local_cond_encoder.1.") for k in frozen)


def test_residual_block_film_scale_and_bias():
    """cond_predict_scale: out = scale * blocks[0](x) + bias with scale/bias the two halves."""
    block = ConditionalResidualBlock1D(
        4, 4, cond_dim=3, kernel_size=3, n_groups=2, cond_predict_scale=True
    )
    x = mx.random.normal((2, 5, 4), key=mx.random.key(0))
    cond = mx.random.normal((2, 3), key=mx.random.key(1))
    lin = block.cond_encoder[1]
    embed = np.array(nn_mish(cond) @ lin.weight.T + lin.bias)
    scale, bias = embed[:, None, :4], embed[:, None, 4:]
    expected = block.blocks[1](mx.array(scale * np.array(block.blocks[0](x)) + bias)) + x
    np.testing.assert_allclose(np.array(block(x, cond)), np.array(expected), atol=1e-5)


def nn_mish(x: mx.array) -> mx.array:
    return x * mx.tanh(mx.logaddexp(x, mx.zeros_like(x)))


def test_bad_inputs_raise_clear_errors():
    model = ConditionalUnet1D(2, global_cond_dim=3, diffusion_step_embed_dim=8, down_dims=[8, 16])
    sample = mx.zeros((1, 8, 2))
    with pytest.raises(ValueError, match="global_cond_dim=3"):
        model(sample, 0)
    with pytest.raises(ValueError, match=r"input_dim=2"):
        model(mx.zeros((1, 8, 3)), 0, global_cond=mx.zeros((1, 3)))
    with pytest.raises(ValueError, match="divisible by 2"):
        model(mx.zeros((1, 7, 2)), 0, global_cond=mx.zeros((1, 3)))
    with pytest.raises(ValueError, match="local_cond_dim=None"):
        model(sample, 0, local_cond=mx.zeros((1, 8, 1)), global_cond=mx.zeros((1, 3)))


def test_compiles_and_matches_eager(fixtures_dir):
    model, t = load_fixture(fixtures_dir, "unet_global")
    args = (
        mx.array(t["input.sample"]),
        mx.array(t["input.timestep"]),
        mx.array(t["input.global_cond"]),
    )
    fn = mx.compile(lambda s, ts, g: model(s, ts, global_cond=g))
    np.testing.assert_allclose(np.array(fn(*args)), t["output.prediction"], **TOL)


@pytest.mark.parametrize("name", NAMES)
def test_film_tables_give_the_same_prediction(fixtures_dir, name):
    """The FiLM features of a whole loop, computed ahead, replace the per-step condition
    encoders: the same output at every step."""
    model, t = load_fixture(fixtures_dir, name)
    sample = mx.array(t["input.sample"])
    kwargs = cond_kwargs(t)
    timesteps = mx.array([99, 40, 0])
    film_time, film_cond = model.film_tables(timesteps, kwargs.get("global_cond"))
    width = sum(block.film_channels for block in model.film_blocks())
    assert film_time.shape == (3, width)
    assert (film_cond is None) == ("global_cond" not in kwargs)
    local = {"local_cond": kwargs["local_cond"]} if "local_cond" in kwargs else {}
    for s in range(3):
        expected = model(sample, timesteps[s], **kwargs)
        got = model(sample, 0, film_time=film_time[s], film_cond=film_cond, **local)
        np.testing.assert_allclose(np.array(got), np.array(expected), **TOL)
