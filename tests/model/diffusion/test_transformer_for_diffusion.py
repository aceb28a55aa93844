"""TransformerForDiffusion against upstream's outputs and activations, plus its optimizer split."""

import json
import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map
from safetensors.numpy import load_file

from diffusion_policy_mlx.common.upstream import load_upstream_state_dict
from diffusion_policy_mlx.model.diffusion.transformer_for_diffusion import (
    MultiheadAttention,
    TransformerForDiffusion,
)

TOL = {"atol": 1e-5, "rtol": 1e-4}
NAMES = ["transformer", "transformer_condlayers"]


def load_fixture(fixtures_dir, name, load_weights=True):
    tensors = load_file(fixtures_dir / f"{name}.safetensors")
    meta = json.loads((fixtures_dir / f"{name}.json").read_text())
    model = TransformerForDiffusion(**meta["constructor_kwargs"])
    if load_weights:
        state_dict = {
            k.removeprefix("state_dict."): v
            for k, v in tensors.items()
            if k.startswith("state_dict.")
        }
        load_upstream_state_dict(model, state_dict)
    model.eval()
    return model, tensors


def inputs(t):
    return mx.array(t["input.sample"]), mx.array(t["input.timestep"]), mx.array(t["input.cond"])


@pytest.mark.parametrize("name", NAMES)
def test_prediction_matches_upstream(fixtures_dir, name):
    model, t = load_fixture(fixtures_dir, name)
    out = model(*inputs(t))
    np.testing.assert_allclose(np.array(out), t["output.prediction"], **TOL)
    # p_drop_* = 0, so training mode gives the same numbers.
    model.train()
    np.testing.assert_allclose(np.array(model(*inputs(t))), t["output.prediction"], **TOL)


@pytest.mark.parametrize("name", NAMES)
def test_every_stage_matches_upstream(fixtures_dir, name):
    model, t = load_fixture(fixtures_dir, name)
    act = {
        k.removeprefix("intermediate."): v for k, v in t.items() if k.startswith("intermediate.")
    }
    sample, timestep, cond = inputs(t)

    def check(actual, key):
        np.testing.assert_allclose(np.array(actual), act[key], err_msg=key, **TOL)

    check(model.time_emb(timestep), "time_emb")
    check(model.cond_obs_emb(cond), "cond_obs_emb")
    tokens = mx.concatenate(
        [mx.array(act["time_emb"])[:, None], mx.array(act["cond_obs_emb"])], axis=1
    )
    x = tokens + model.cond_pos_emb
    if model.n_cond_layers:
        check(model.encoder.layers[0](x), "encoder.layers.0")
        check(model.encoder(x), "encoder")
    else:
        for layer in model.encoder:
            x = layer(x)
        check(x, "encoder")

    memory = mx.array(act["encoder"])
    x = model.input_emb(sample) + model.pos_emb
    for i, layer in enumerate(model.decoder.layers):
        check(layer(x, memory, model.mask, model.memory_mask), f"decoder.layers.{i}")
        x = mx.array(act[f"decoder.layers.{i}"])
    check(x, "decoder")
    check(model.ln_f(mx.array(act["decoder"])), "ln_f")
    check(model.head(mx.array(act["ln_f"])), "head")


def test_causal_masks_equal_upstream_buffers(fixtures_dir):
    model, t = load_fixture(fixtures_dir, "transformer", load_weights=False)
    np.testing.assert_array_equal(np.array(model.mask), t["state_dict.mask"])
    np.testing.assert_array_equal(np.array(model.memory_mask), t["state_dict.memory_mask"])
    # Hand-derived: row t allows memory tokens s <= t + 1 (token 0 is the time step).
    assert np.isinf(np.array(model.memory_mask)[0]).tolist() == [False, False, True]
    trainable = {k for k, _ in tree_flatten(model.trainable_parameters())}
    everything = {k for k, _ in tree_flatten(model.parameters())}
    assert everything - trainable == {"mask", "memory_mask"}
    uncausal, _ = load_fixture(fixtures_dir, "transformer_condlayers", load_weights=False)
    assert uncausal.mask is None and uncausal.memory_mask is None


def test_causality(fixtures_dir):
    model, t = load_fixture(fixtures_dir, "transformer")
    sample, timestep, cond = inputs(t)
    base = np.array(model(sample, timestep, cond))
    # A change at action step 6 leaves steps 0..5 alone and moves step 6.
    changed = np.array(model(sample + (mx.arange(10) == 6)[None, :, None], timestep, cond))
    np.testing.assert_array_equal(changed[:, :6], base[:, :6])
    assert np.abs(changed[:, 6] - base[:, 6]).max() > 1e-6
    # Observation 1 is memory token 2, visible from action step 1 on.
    changed = np.array(model(sample, timestep, cond + (mx.arange(2) == 1)[None, :, None]))
    np.testing.assert_array_equal(changed[:, 0], base[:, 0])
    assert np.abs(changed[:, 1] - base[:, 1]).max() > 1e-6


def test_scalar_timestep_broadcasts(fixtures_dir):
    model, t = load_fixture(fixtures_dir, "transformer")
    sample, _, cond = inputs(t)
    expected = np.array(model(sample, mx.array([17, 17, 17]), cond))
    for timestep in (17, mx.array(17)):
        np.testing.assert_allclose(np.array(model(sample, timestep, cond)), expected, atol=1e-6)


def mha_ref(query, key, w_in, b_in, w_out, b_out, n_head, mask=None):
    """torch's MultiheadAttention, batch_first, in numpy."""
    e = query.shape[-1]
    q = query @ w_in[:e].T + b_in[:e]
    k = key @ w_in[e : 2 * e].T + b_in[e : 2 * e]
    v = key @ w_in[2 * e :].T + b_in[2 * e :]
    d = e // n_head

    def heads(a):
        return a.reshape(a.shape[0], a.shape[1], n_head, d).transpose(0, 2, 1, 3)

    scores = heads(q) @ heads(k).transpose(0, 1, 3, 2) / math.sqrt(d)
    if mask is not None:
        scores = scores + mask
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = (weights @ heads(v)).transpose(0, 2, 1, 3).reshape(query.shape)
    return out @ w_out.T + b_out


@pytest.mark.parametrize("fused", [True, False])
def test_multihead_attention_matches_torch_definition(fused):
    rng = np.random.default_rng(0)
    attn = MultiheadAttention(8, 2)
    params = {
        "in_proj_weight": rng.standard_normal((24, 8)),
        "in_proj_bias": rng.standard_normal(24),
        "out_proj.weight": rng.standard_normal((8, 8)),
        "out_proj.bias": rng.standard_normal(8),
    }
    load_upstream_state_dict(attn, params)
    if not fused:
        # The explicit path used for attention dropout; a zero-rate dropout keeps it exact.
        attn.dropout = 0.5
        attn.attn_drop = nn.Dropout(0.0)
        attn.train()
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    mem = rng.standard_normal((2, 3, 8)).astype(np.float32)
    mask = np.where(np.arange(5)[:, None] >= np.arange(3)[None, :] - 1, 0.0, -np.inf)
    p = [params[k].astype(np.float32) for k in params]
    xa, ma = mx.array(x), mx.array(mem)
    np.testing.assert_allclose(np.array(attn(xa, xa, xa)), mha_ref(x, x, *p, 2), atol=1e-4)
    np.testing.assert_allclose(
        np.array(attn(xa, ma, ma, mx.array(mask.astype(np.float32)))),
        mha_ref(x, mem, *p, 2, mask),
        atol=1e-4,
    )


def test_attention_dropout_acts_only_in_training():
    model = TransformerForDiffusion(3, 3, horizon=4, n_layer=1, n_head=2, n_emb=8, cond_dim=0)
    model.update(tree_map(lambda p: p * 50, model.trainable_parameters()))
    sample = mx.random.normal((2, 4, 3), key=mx.random.key(0))
    model.eval()
    first = np.array(model(sample, 3))
    np.testing.assert_array_equal(np.array(model(sample, 3)), first)
    model.train()
    assert np.abs(np.array(model(sample, 3)) - first).max() > 1e-3


def test_encoder_only_variant_is_causal_and_time_dependent():
    model = TransformerForDiffusion(
        3, 2, horizon=6, n_layer=2, n_head=2, n_emb=16, causal_attn=True, time_as_cond=False
    )
    model.eval()
    assert model.encoder_only and model.decoder is None and model.cond_pos_emb is None
    assert model.pos_emb.shape == (1, 7, 16) and model.mask.shape == (7, 7)
    sample = mx.random.normal((2, 6, 3), key=mx.random.key(0))
    base = np.array(model(sample, 5))
    assert base.shape == (2, 6, 2)
    changed = np.array(model(sample + (mx.arange(6) == 3)[None, :, None], 5))
    np.testing.assert_array_equal(changed[:, :3], base[:, :3])
    assert np.abs(changed[:, 3] - base[:, 3]).max() > 1e-5
    # The time token is visible to every position.
    assert np.abs(np.array(model(sample, 50))[:, 0] - base[:, 0]).max() > 1e-5


def test_init_follows_upstream():
    mx.random.seed(0)
    model = TransformerForDiffusion(2, 2, horizon=8, n_layer=2, n_head=4, n_emb=64, cond_dim=0)
    params = dict(tree_flatten(model.parameters()))
    # Linear and attention weights, and pos_emb: N(0, 0.02). LayerNorm weights: 1.
    drawn = [
        v
        for k, v in params.items()
        if k.endswith("weight") and "norm" not in k and k != "ln_f.weight"
    ]
    drawn.append(model.pos_emb)
    weights = np.concatenate([np.array(v).ravel() for v in drawn])
    assert abs(weights.std() - 0.02) < 0.001
    assert all(not np.array(v).any() for k, v in params.items() if k.endswith("bias"))
    assert all(
        np.array(v).tolist() == [1.0] * 64
        for k, v in params.items()
        if "norm" in k and k.endswith("weight")
    )
    # Upstream leaves cond_pos_emb at zero unless observations are a condition.
    assert not np.array(model.cond_pos_emb).any()


def test_optim_groups_match_upstream_split(fixtures_dir):
    model, _ = load_fixture(fixtures_dir, "transformer", load_weights=False)
    decay, no_decay = model.get_optim_groups(weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    per_layer = [
        "self_attn.in_proj_weight",
        "self_attn.out_proj.weight",
        "multihead_attn.in_proj_weight",
        "multihead_attn.out_proj.weight",
        "linear1.weight",
        "linear2.weight",
    ]
    expected_decay = {
        "input_emb.weight",
        "cond_obs_emb.weight",
        "encoder.0.weight",
        "encoder.2.weight",
        "head.weight",
    } | {f"decoder.layers.{i}.{n}" for i in range(2) for n in per_layer}
    assert set(decay["params"]) == expected_decay
    trainable = {k for k, _ in tree_flatten(model.trainable_parameters())}
    assert set(no_decay["params"]) == trainable - expected_decay
    assert {"pos_emb", "cond_pos_emb", "ln_f.weight", "decoder.layers.1.norm3.weight"} <= set(
        no_decay["params"]
    )


def test_configure_optimizers_applies_the_split(fixtures_dir):
    model, _ = load_fixture(fixtures_dir, "transformer_condlayers", load_weights=False)
    lr, wd = 1e-2, 0.5
    opt = model.configure_optimizers(learning_rate=lr, weight_decay=wd, betas=(0.9, 0.95))
    decay = set(model.get_optim_groups(wd)[0]["params"])
    before = dict(tree_flatten(model.trainable_parameters()))
    # Gradients of +-1: bias-corrected Adam's first step moves every entry by exactly lr
    # (eps aside); decayed parameters first shrink by (1 - lr * wd), as torch's AdamW.
    grads = tree_map(lambda p: mx.where(p >= 0, 1.0, -1.0), model.trainable_parameters())
    grads_flat = dict(tree_flatten(grads))
    opt.update(model, grads)
    after = dict(tree_flatten(model.trainable_parameters()))
    for key, p0 in before.items():
        p0 = np.array(p0)
        shrink = 1 - lr * wd if key in decay else 1.0
        expected = p0 * shrink - lr * np.array(grads_flat[key])
        np.testing.assert_allclose(np.array(after[key]), expected, atol=1e-6, err_msg=key)


def test_bad_inputs_raise_clear_errors(fixtures_dir):
    model, t = load_fixture(fixtures_dir, "transformer", load_weights=False)
    sample, timestep, cond = inputs(t)
    with pytest.raises(ValueError, match="cond must be"):
        model(sample, timestep)
    with pytest.raises(ValueError, match="horizon=10"):
        model(mx.zeros((3, 11, 2)), timestep, cond)
    with pytest.raises(ValueError, match="input_dim=2"):
        model(mx.zeros((3, 10, 4)), timestep, cond)
    with pytest.raises(ValueError, match="requires time_as_cond=True"):
        TransformerForDiffusion(2, 2, horizon=4, cond_dim=3, time_as_cond=False)


def test_compiles_and_matches_eager(fixtures_dir):
    model, t = load_fixture(fixtures_dir, "transformer")
    fn = mx.compile(lambda s, ts, c: model(s, ts, c))
    np.testing.assert_allclose(np.array(fn(*inputs(t))), t["output.prediction"], **TOL)
