"""EMAModel against upstream's recorded decays and tiny-Linear updates (ema.json/.safetensors)."""

import copy
import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from safetensors.numpy import load_file

from diffusion_policy_mlx.model.common.normalizer import LinearNormalizer
from diffusion_policy_mlx.model.diffusion.ema_model import EMAModel


@pytest.fixture(scope="module")
def ref_json(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "ema.json").read_text())


def test_decay_schedule_matches_upstream(ref_json):
    ema = EMAModel(nn.Linear(1, 1), **ref_json["constructor_kwargs"])
    for steps, decays in (
        ("steps", "decay"),
        ("dense_steps", "dense_decay"),
        ("large_steps", "large_decay"),
    ):
        for s, d in zip(ref_json[steps], ref_json[decays], strict=True):
            assert abs(ema.get_decay(s) - d) <= 1e-12, s
    variant = ref_json["variant_update_after_step_5_power_2_3"]
    ema = EMAModel(nn.Linear(1, 1), **variant["constructor_kwargs"])
    for s, d in zip(variant["steps"], variant["decay"], strict=True):
        assert abs(ema.get_decay(s) - d) <= 1e-12, s


def test_tiny_linear_updates_match_upstream(fixtures_dir, ref_json):
    ref = load_file(fixtures_dir / "ema.safetensors")
    model = nn.Linear(3, 2)
    model.update({k: mx.array(ref[f"input.model_init.{k}"]) for k in ("weight", "bias")})
    ema = EMAModel(copy.deepcopy(model), **ref_json["constructor_kwargs"])
    for k in ("weight", "bias"):
        np.testing.assert_array_equal(np.array(ema.averaged_model[k]), ref[f"output.ema_init.{k}"])
    for i in range(5):
        model.update({k: mx.array(ref[f"input.params_update{i}.{k}"]) for k in ("weight", "bias")})
        ema.step(model)
        assert abs(ema.decay - ref_json["decay_used_float64"][i]) <= 1e-12
        for k in ("weight", "bias"):
            np.testing.assert_allclose(
                np.array(ema.averaged_model[k]), ref[f"output.ema_update{i}.{k}"], atol=1e-6
            )
    assert ema.optimization_step == 5


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.normalizer = LinearNormalizer()
        self.normalizer.fit({"obs": np.array([[0.0], [2.0]], np.float32)})
        self.layers = [
            nn.Linear(2, 4),
            nn.BatchNorm(4),
            nn.GroupNorm(2, 4, pytorch_compatible=True),
        ]


def _fill(net: _Net, value: float) -> None:
    net.update(
        {
            "normalizer": {"params_dict": {"obs": {"scale": mx.array([value])}}},
            "layers": [
                {"weight": mx.full((4, 2), value), "bias": mx.full((4,), value)},
                {"weight": mx.full((4,), value), "running_mean": mx.full((4,), value)},
                {"weight": mx.full((4,), value), "bias": mx.full((4,), value)},
            ],
        }
    )


def test_batchnorm_and_frozen_parameters_are_copied_the_rest_averaged():
    net = _Net()
    _fill(net, 0.0)
    ema = EMAModel(copy.deepcopy(net), power=1.0)
    assert not ema.averaged_model.training
    assert tree_flatten(ema.averaged_model.trainable_parameters()) == []
    ema.optimization_step = 2  # get_decay(2) = 1 - 2**-1 = 0.5
    _fill(net, 4.0)
    ema.step(net)
    assert ema.decay == 0.5
    avg = ema.averaged_model
    # averaged: Linear and GroupNorm (0.5 * 0 + 0.5 * 4)
    np.testing.assert_array_equal(np.array(avg.layers[0].weight), np.full((4, 2), 2.0))
    np.testing.assert_array_equal(np.array(avg.layers[2].bias), np.full(4, 2.0))
    # copied: BatchNorm parameters and buffers, frozen normalizer statistics
    np.testing.assert_array_equal(np.array(avg.layers[1].weight), np.full(4, 4.0))
    np.testing.assert_array_equal(np.array(avg.layers[1].running_mean), np.full(4, 4.0))
    np.testing.assert_array_equal(np.array(avg.normalizer.params_dict["obs"]["scale"]), [4.0])
    # the trained model is untouched and still trainable
    assert np.array(net.layers[0].weight).max() == 4.0
    assert len(tree_flatten(net.trainable_parameters())) == 6


def test_mismatched_models_and_resume_state():
    ema = EMAModel(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="different parameters"):
        ema.step(nn.Linear(2, 2, bias=False))
    ema.step(nn.Linear(2, 2))
    ema.step(nn.Linear(2, 2))
    resumed = EMAModel(nn.Linear(2, 2))
    resumed.load_state_dict(json.loads(json.dumps(ema.state_dict())))
    assert resumed.optimization_step == 2 and resumed.decay == ema.decay
    assert resumed.get_decay(resumed.optimization_step) == ema.get_decay(2)
