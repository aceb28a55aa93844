"""Every weight of every denoiser is an MLX parameter: loaded, trained, saved and restored.

Guards against weights hidden where MLX does not look (underscore attributes, plain Python
containers held privately): such a weight would be missing from ``parameters()``, get no
gradient, never move under the optimizer and be lost on save.
"""

import json

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten
from safetensors.numpy import load_file

from diffusion_policy_mlx.common.upstream import load_upstream_state_dict
from diffusion_policy_mlx.model.diffusion.conditional_unet1d import ConditionalUnet1D
from diffusion_policy_mlx.model.diffusion.transformer_for_diffusion import TransformerForDiffusion

# Entries that are registered but deliberately not trained, and why.
BUFFERS = {"transformer": {"mask", "memory_mask"}}  # torch buffers: causal masks
UNUSED_PREFIX = {"unet_local": "local_cond_encoder.1."}  # upstream never adds its output
NAMES = ["unet_global", "unet_local", "unet_nocond", "transformer", "transformer_condlayers"]


def build(fixtures_dir, name):
    tensors = load_file(fixtures_dir / f"{name}.safetensors")
    meta = json.loads((fixtures_dir / f"{name}.json").read_text())
    cls = TransformerForDiffusion if name.startswith("transformer") else ConditionalUnet1D
    model = cls(**meta["constructor_kwargs"])
    state_dict = {
        k.removeprefix("state_dict."): v for k, v in tensors.items() if k.startswith("state_dict.")
    }
    args = [mx.array(tensors["input.sample"]), mx.array(tensors["input.timestep"])]
    kwargs = {
        key: mx.array(tensors[f"input.{key}"])
        for key in ("cond", "global_cond", "local_cond")
        if f"input.{key}" in tensors
    }
    return cls, model, state_dict, meta, args, kwargs


def flat(tree):
    return dict(tree_flatten(tree))


@pytest.mark.parametrize("name", NAMES)
def test_every_upstream_key_is_an_mlx_parameter(fixtures_dir, name):
    _, model, state_dict, meta, _, _ = build(fixtures_dir, name)
    params = flat(model.parameters())
    upstream = {k: v for k, v in state_dict.items() if k != "_dummy_variable"}
    assert set(upstream) == set(params)
    assert sum(v.size for v in upstream.values()) == sum(v.size for v in params.values())
    buffers = BUFFERS.get(name, set())
    n_params = sum(v.size for k, v in params.items() if k not in buffers)
    assert n_params == meta["n_params"]
    load_upstream_state_dict(model, state_dict)


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_trains_and_survives_save_load(fixtures_dir, name, tmp_path):
    cls, model, state_dict, meta, args, kwargs = build(fixtures_dir, name)
    load_upstream_state_dict(model, state_dict)
    model.train()

    trainable = flat(model.trainable_parameters())
    frozen = set(flat(model.parameters())) - set(trainable)
    expected_frozen = set(BUFFERS.get(name, set()))
    if name in UNUSED_PREFIX:
        expected_frozen |= {k for k in state_dict if k.startswith(UNUSED_PREFIX[name])}
    assert frozen == expected_frozen

    target = mx.random.normal(model(*args, **kwargs).shape, key=mx.random.key(0))

    def loss_fn(m):
        return mx.mean((m(*args, **kwargs) - target) ** 2)

    loss, grads = nn.value_and_grad(model, loss_fn)(model)
    flat_grads = flat(grads)
    assert set(flat_grads) == set(trainable)
    zero_grad = [k for k, g in flat_grads.items() if not np.abs(np.array(g)).max() > 0]
    assert zero_grad == []

    before = {k: np.array(v) for k, v in flat(model.parameters()).items()}
    opt = optim.AdamW(learning_rate=1e-3)
    opt.update(model, grads)
    mx.eval(model.parameters(), opt.state)
    after = {k: np.array(v) for k, v in flat(model.parameters()).items()}
    unchanged = [k for k in trainable if np.array_equal(after[k], before[k])]
    assert unchanged == []
    for k in frozen:
        np.testing.assert_array_equal(after[k], before[k])
    assert float(loss_fn(model)) < float(loss)

    path = tmp_path / f"{name}.safetensors"
    mx.save_safetensors(str(path), flat(model.parameters()))
    restored = cls(**meta["constructor_kwargs"])
    restored.load_weights(str(path), strict=True)
    restored.train()
    for k, v in flat(restored.parameters()).items():
        np.testing.assert_array_equal(np.array(v), after[k], err_msg=k)
    np.testing.assert_array_equal(
        np.array(restored(*args, **kwargs)), np.array(model(*args, **kwargs))
    )
