"""The upstream state_dict loader: layouts decided by module type, strict errors, round trips."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from safetensors.numpy import load_file

from diffusion_policy_mlx.common.upstream import load_upstream_state_dict, to_upstream_state_dict
from diffusion_policy_mlx.model.diffusion.conditional_unet1d import ConditionalUnet1D

RNG = np.random.default_rng(0)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


class Net(nn.Module):
    """Torch-named layers of every kind the loader treats specially, nested in a list."""

    def __init__(self):
        super().__init__()
        self.features = [
            nn.Conv2d(3, 4, kernel_size=(3, 2), padding=1),
            nn.BatchNorm(4),
            nn.ConvTranspose2d(4, 5, kernel_size=(2, 3), stride=2),
        ]
        self.conv1 = nn.Conv1d(2, 3, kernel_size=3)
        self.up1 = nn.ConvTranspose1d(3, 2, kernel_size=4, stride=2, padding=1)
        self.fc = nn.Linear(5, 6)


def torch_state_dict():
    return {
        "features.0.weight": randn(4, 3, 3, 2),
        "features.0.bias": randn(4),
        "features.1.weight": randn(4),
        "features.1.bias": randn(4),
        "features.1.running_mean": randn(4),
        "features.1.running_var": np.abs(randn(4)) + 0.5,
        "features.1.num_batches_tracked": np.array(7, np.int64),
        "features.2.weight": randn(4, 5, 2, 3),
        "features.2.bias": randn(5),
        "conv1.weight": randn(3, 2, 3),
        "conv1.bias": randn(3),
        "up1.weight": randn(3, 2, 4),
        "up1.bias": randn(2),
        "fc.weight": randn(6, 5),
        "fc.bias": randn(6),
    }


def conv2d_ref(x, w, b, padding):
    """x (B, C, H, W), w (O, C, kh, kw) torch layout -> (B, O, H', W')."""
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    kh, kw = w.shape[2:]
    ho, wo = xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
    out = np.empty((x.shape[0], w.shape[0], ho, wo))
    for i in range(ho):
        for j in range(wo):
            out[:, :, i, j] = np.einsum("bchw,ochw->bo", xp[:, :, i : i + kh, j : j + kw], w)
    return out + b[None, :, None, None]


def conv_transpose2d_ref(x, w, b, stride):
    """x (B, C, H, W), w (C, O, kh, kw) torch layout, no padding."""
    kh, kw = w.shape[2:]
    h, wd = x.shape[2:]
    out = np.zeros((x.shape[0], w.shape[1], (h - 1) * stride + kh, (wd - 1) * stride + kw))
    for i in range(h):
        for j in range(wd):
            patch = np.einsum("bc,cohw->bohw", x[:, :, i, j], w)
            out[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw] += patch
    return out + b[None, :, None, None]


def test_layouts_follow_module_type():
    net = Net()
    sd = torch_state_dict()
    loaded = load_upstream_state_dict(net, sd)
    assert set(loaded) == set(sd) - {"features.1.num_batches_tracked"}
    net.eval()

    x = randn(2, 3, 5, 4)  # torch NCHW
    y = np.array(net.features[0](mx.array(x.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
    expected = conv2d_ref(x, sd["features.0.weight"], sd["features.0.bias"], padding=1)
    np.testing.assert_allclose(y, expected, atol=1e-4)

    bn = np.array(net.features[1](mx.array(expected.transpose(0, 2, 3, 1).astype(np.float32))))
    bn_expected = (expected - sd["features.1.running_mean"][:, None, None]) / np.sqrt(
        sd["features.1.running_var"][:, None, None] + 1e-5
    ) * sd["features.1.weight"][:, None, None] + sd["features.1.bias"][:, None, None]
    np.testing.assert_allclose(bn.transpose(0, 3, 1, 2), bn_expected, atol=1e-4)

    z = randn(2, 4, 3, 2)
    y = net.features[2](mx.array(z.transpose(0, 2, 3, 1)))
    expected = conv_transpose2d_ref(z, sd["features.2.weight"], sd["features.2.bias"], stride=2)
    np.testing.assert_allclose(np.array(y).transpose(0, 3, 1, 2), expected, atol=1e-4)

    x = randn(2, 5)
    np.testing.assert_allclose(
        np.array(net.fc(mx.array(x))), x @ sd["fc.weight"].T + sd["fc.bias"], atol=1e-5
    )
    # Conv1d / ConvTranspose1d numerics are checked in test_conv1d_components; here the layout.
    assert net.conv1.weight.shape == (3, 3, 2)
    np.testing.assert_array_equal(np.array(net.conv1.weight), sd["conv1.weight"].transpose(0, 2, 1))
    assert net.up1.weight.shape == (2, 4, 3)
    np.testing.assert_array_equal(np.array(net.up1.weight), sd["up1.weight"].transpose(1, 2, 0))


def test_round_trip_is_exact():
    net = Net()
    sd = torch_state_dict()
    load_upstream_state_dict(net, sd)
    back = to_upstream_state_dict(net)
    assert set(back) == set(sd)
    # torch's BatchNorm step counter is not state we keep; it is exported as 0.
    assert back.pop("features.1.num_batches_tracked").dtype == np.int64
    for key, value in back.items():
        assert isinstance(value, np.ndarray) and value.dtype == np.float32
        np.testing.assert_array_equal(value, sd[key], err_msg=key)


def test_strict_reports_every_problem_at_once_and_changes_nothing():
    net = Net()
    before = {k: np.array(v) for k, v in tree_flatten(net.parameters())}
    sd = torch_state_dict()
    del sd["fc.bias"], sd["features.1.running_var"]
    sd["fc.extra"] = randn(3)
    sd["head.weight"] = randn(2, 2)
    sd["conv1.weight"] = randn(3, 2, 5)  # kernel 5 instead of 3
    with pytest.raises(ValueError) as info:
        load_upstream_state_dict(net, sd)
    msg = str(info.value)
    assert "Net" in msg
    assert "missing keys (2): " in msg and "fc.bias" in msg and "features.1.running_var" in msg
    assert "unexpected keys (2): fc.extra, head.weight" in msg
    assert "wrong shapes (1)" in msg
    assert "conv1.weight: upstream (3, 2, 5) is (3, 5, 2) in MLX layout, model has (3, 3, 2)" in msg
    for k, v in tree_flatten(net.parameters()):
        np.testing.assert_array_equal(np.array(v), before[k])


def test_non_strict_loads_what_matches():
    net = Net()
    old_bias = np.array(net.fc.bias)
    sd = {"fc.weight": randn(6, 5), "conv1.weight": randn(3, 2, 9), "nope": randn(1)}
    loaded = load_upstream_state_dict(net, sd, strict=False)
    assert loaded == ["fc.weight"]
    np.testing.assert_array_equal(np.array(net.fc.weight), sd["fc.weight"])
    np.testing.assert_array_equal(np.array(net.fc.bias), old_bias)


def test_placeholders_are_ignored_but_only_when_empty():
    net = nn.Linear(2, 2)
    sd = {"weight": randn(2, 2), "bias": randn(2), "_dummy_variable": np.zeros(0, np.float32)}
    load_upstream_state_dict(net, sd)
    sd["_dummy_variable"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="unexpected keys \\(1\\): _dummy_variable"):
        load_upstream_state_dict(net, sd)


def test_values_take_the_parameter_dtype():
    net = nn.Linear(2, 2)
    load_upstream_state_dict(net, {"weight": np.eye(2), "bias": np.zeros(2)})  # float64 in
    assert net.weight.dtype == mx.float32
    np.testing.assert_array_equal(np.array(net.weight), np.eye(2))


@pytest.mark.parametrize("name", ["unet_global", "unet_local", "unet_nocond"])
def test_upstream_unet_round_trip(fixtures_dir, name):
    tensors = load_file(fixtures_dir / f"{name}.safetensors")
    kwargs = json.loads((fixtures_dir / f"{name}.json").read_text())["constructor_kwargs"]
    sd = {
        k.removeprefix("state_dict."): v for k, v in tensors.items() if k.startswith("state_dict.")
    }
    model = ConditionalUnet1D(**kwargs)
    load_upstream_state_dict(model, sd)
    back = to_upstream_state_dict(model)
    assert back.keys() == sd.keys()
    for key in sd:
        np.testing.assert_array_equal(back[key], sd[key], err_msg=key)
