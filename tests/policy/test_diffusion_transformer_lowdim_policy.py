"""DiffusionTransformerLowdimPolicy: obs as condition tokens or inpainted, loss, optimizer."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map
from policy_reference import (
    AffineDenoiser,
    add_noise_np,
    affine_denoiser_np,
    fit_normalizer,
    masked_mse_np,
    normalize_np,
    reference_sample,
    unnormalize_np,
)

from diffusion_policy_mlx.model.diffusion.transformer_for_diffusion import TransformerForDiffusion
from diffusion_policy_mlx.policy.diffusion_transformer_lowdim_policy import (
    DiffusionTransformerLowdimPolicy,
)
from diffusion_policy_mlx.schedulers import DDPMScheduler

B, T, To, Ta, Do, Da = 3, 8, 2, 4, 5, 2
STEPS = 10
# (obs_as_cond, pred_action_steps_only)
CASES = [(True, False), (True, True), (False, False)]


def scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type
    )


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    obs = (rng.normal(size=(B, T, Do)) * [1, 2, 3, 4, 5] + [0, 1, -1, 2, 5]).astype(np.float32)
    action = (rng.normal(size=(B, T, Da)) * [3, 0.5] + [100, -2]).astype(np.float32)
    return obs, action, fit_normalizer({"obs": obs, "action": action})


def make_policy(model, obs_as_cond, pred_action_steps_only=False, noise_scheduler=None):
    return DiffusionTransformerLowdimPolicy(
        model=model,
        noise_scheduler=noise_scheduler or scheduler(),
        horizon=T,
        obs_dim=Do,
        action_dim=Da,
        n_action_steps=Ta,
        n_obs_steps=To,
        num_inference_steps=STEPS,
        obs_as_cond=obs_as_cond,
        pred_action_steps_only=pred_action_steps_only,
    )


def tiny_transformer(obs_as_cond: bool) -> TransformerForDiffusion:
    return TransformerForDiffusion(
        input_dim=Da if obs_as_cond else Da + Do,
        output_dim=Da if obs_as_cond else Da + Do,
        horizon=T,
        n_obs_steps=To,
        cond_dim=Do if obs_as_cond else 0,
        n_layer=2,
        n_head=2,
        n_emb=16,
        p_drop_emb=0.0,
        p_drop_attn=0.0,
        causal_attn=True,
        obs_as_cond=obs_as_cond,
    )


@pytest.mark.parametrize("obs_as_cond,pred_action_steps_only", CASES)
def test_predict_action_matches_upstream_procedure(data, obs_as_cond, pred_action_steps_only):
    obs, _, normalizer = data
    policy = make_policy(AffineDenoiser(), obs_as_cond, pred_action_steps_only)
    policy.set_normalizer(normalizer)
    key = mx.random.key(4)
    result = policy.predict_action({"obs": mx.array(obs[:, :To])}, key=key)

    nobs = normalize_np(normalizer, "obs", obs[:, :To])
    conds = {}
    if obs_as_cond:
        conds["cond"] = mx.array(nobs)
        shape = (B, Ta if pred_action_steps_only else T, Da)
    else:
        shape = (B, T, Da + Do)
    cond_data = np.zeros(shape, np.float32)
    cond_mask = np.zeros(shape, bool)
    if not obs_as_cond:
        cond_data[:, :To, Da:] = nobs
        cond_mask[:, :To, Da:] = True
    nsample = reference_sample(
        AffineDenoiser(), scheduler(), STEPS, cond_data, cond_mask, key, **conds
    )
    action_pred = unnormalize_np(normalizer, "action", nsample[..., :Da])
    action = action_pred if pred_action_steps_only else action_pred[:, To - 1 : To - 1 + Ta]

    np.testing.assert_allclose(np.array(result["action_pred"]), action_pred, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.array(result["action"]), action, rtol=1e-5, atol=1e-4)
    assert result["action"].shape == (B, Ta, Da)
    if obs_as_cond:
        assert set(result) == {"action", "action_pred"}
    else:
        obs_pred = unnormalize_np(normalizer, "obs", nsample[..., Da:])
        np.testing.assert_allclose(np.array(result["obs_pred"]), obs_pred, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(
            np.array(result["action_obs_pred"]), obs_pred[:, To - 1 : To - 1 + Ta], atol=1e-4
        )


@pytest.mark.parametrize("obs_as_cond,pred_action_steps_only", CASES)
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_compute_loss_matches_hand_computed(
    data, obs_as_cond, pred_action_steps_only, prediction_type
):
    obs, action, normalizer = data
    policy = make_policy(
        AffineDenoiser(-0.2), obs_as_cond, pred_action_steps_only, scheduler(prediction_type)
    )
    policy.set_normalizer(normalizer)
    nobs = normalize_np(normalizer, "obs", obs)
    naction = normalize_np(normalizer, "action", action)
    conds = {}
    if obs_as_cond:
        conds["cond"] = nobs[:, :To]
        trajectory = naction[:, To - 1 : To - 1 + Ta] if pred_action_steps_only else naction
        mask = np.zeros(trajectory.shape, bool)
    else:
        trajectory = np.concatenate([naction, nobs], axis=-1)
        mask = np.zeros(trajectory.shape, bool)
        mask[:, :To, Da:] = True
    noise = np.random.default_rng(8).normal(size=trajectory.shape).astype(np.float32)
    timesteps = np.array([0, 17, 99])

    loss = policy.compute_loss(
        {"obs": mx.array(obs), "action": mx.array(action)},
        noise=mx.array(noise),
        timesteps=mx.array(timesteps),
    )

    noisy = add_noise_np(policy.noise_scheduler, trajectory, noise, timesteps)
    noisy[mask] = trajectory[mask]
    pred = affine_denoiser_np(-0.2, noisy, timesteps, **conds)
    target = noise if prediction_type == "epsilon" else trajectory
    assert loss.item() == pytest.approx(masked_mse_np(pred, target, mask), rel=1e-5)


@pytest.mark.parametrize("obs_as_cond", [True, False])
def test_compiled_sampling_equals_eager_with_the_transformer(data, obs_as_cond):
    obs, _, normalizer = data
    policy = make_policy(tiny_transformer(obs_as_cond), obs_as_cond)
    policy.set_normalizer(normalizer)
    policy.eval()
    obs_dict = {"obs": mx.array(obs[:, :To])}
    compiled = policy.predict_action(obs_dict, key=mx.random.key(6))
    policy.compile_sampling = False
    eager = policy.predict_action(obs_dict, key=mx.random.key(6))
    for k in compiled:
        np.testing.assert_allclose(np.array(compiled[k]), np.array(eager[k]), atol=1e-4, rtol=1e-5)


def test_get_optimizer_decays_only_transformer_weights(data):
    policy = make_policy(tiny_transformer(True), True)
    policy.set_normalizer(data[2])
    trainable = dict(tree_flatten(policy.trainable_parameters()))
    assert trainable and all(k.startswith("model.") for k in trainable)

    optimizer = policy.get_optimizer(weight_decay=0.5, learning_rate=0.1, betas=[0.9, 0.95])
    assert isinstance(optimizer.optimizers[0], type(optimizer.optimizers[-1]))
    assert optimizer.optimizers[0].betas == [0.9, 0.95]
    # Zero gradients: AdamW only applies its decoupled decay, p <- p * (1 - lr * wd).
    optimizer.update(policy, tree_map(mx.zeros_like, policy.trainable_parameters()))
    after = dict(tree_flatten(policy.trainable_parameters()))
    decayed = {f"model.{n}" for n in policy.model.get_optim_groups(0.5)[0]["params"]}
    assert "model.head.weight" in decayed and "model.pos_emb" not in decayed
    for path, before in trainable.items():
        factor = 1 - 0.1 * 0.5 if path in decayed else 1.0
        np.testing.assert_allclose(np.array(after[path]), np.array(before) * factor, rtol=1e-6)


def test_one_optimizer_step_lowers_the_loss(data):
    obs, action, normalizer = data
    policy = make_policy(tiny_transformer(False), False)
    policy.set_normalizer(normalizer)
    batch = {"obs": mx.array(obs), "action": mx.array(action)}
    noise = mx.array(np.random.default_rng(1).normal(size=(B, T, Da + Do)).astype(np.float32))
    timesteps = mx.array([5, 45, 85])

    def loss_fn(p):
        return p.compute_loss(batch, noise=noise, timesteps=timesteps)

    optimizer = policy.get_optimizer(weight_decay=1e-3, learning_rate=1e-3, betas=(0.9, 0.95))
    loss0, grads = nn.value_and_grad(policy, loss_fn)(policy)
    optimizer.update(policy, grads)
    assert loss_fn(policy).item() < loss0.item()


def test_pred_action_steps_only_needs_obs_as_cond():
    with pytest.raises(ValueError, match="pred_action_steps_only=True needs obs_as_cond=True"):
        make_policy(AffineDenoiser(), obs_as_cond=False, pred_action_steps_only=True)
