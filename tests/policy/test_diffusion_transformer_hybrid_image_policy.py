"""DiffusionTransformerHybridImagePolicy: encoder features as condition tokens or inpainted."""

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

from diffusion_policy_mlx.model.common.normalize_util import get_image_range_normalizer
from diffusion_policy_mlx.model.diffusion.transformer_for_diffusion import TransformerForDiffusion
from diffusion_policy_mlx.model.vision.robomimic_obs_encoder import RobomimicObsEncoder
from diffusion_policy_mlx.policy.diffusion_transformer_hybrid_image_policy import (
    DiffusionTransformerHybridImagePolicy,
)
from diffusion_policy_mlx.schedulers import DDPMScheduler

B, T, To, Ta, Da = 2, 8, 2, 4, 2
IMAGE = (3, 32, 32)
STEPS = 6
SHAPE_META = {
    "obs": {
        "image": {"shape": list(IMAGE), "type": "rgb"},
        "agent_pos": {"shape": [2], "type": "low_dim"},
    },
    "action": {"shape": [Da]},
}
ARCH = dict(n_layer=1, n_head=2, n_emb=16, p_drop_attn=0.0)
# (obs_as_cond, pred_action_steps_only)
CASES = [(True, False), (True, True), (False, False)]


def scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type
    )


def make_policy(prediction_type="epsilon", **kwargs) -> DiffusionTransformerHybridImagePolicy:
    kwargs = {"crop_shape": (28, 28), "eval_fixed_crop": True, **ARCH, **kwargs}
    return DiffusionTransformerHybridImagePolicy(
        SHAPE_META, scheduler(prediction_type), T, Ta, To, num_inference_steps=STEPS, **kwargs
    )


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    obs = {
        "image": rng.uniform(size=(B, T, *IMAGE)).astype(np.float32),
        "agent_pos": rng.uniform(0, 512, size=(B, T, 2)).astype(np.float32),
    }
    action = rng.uniform(0, 512, size=(B, T, Da)).astype(np.float32)
    normalizer = fit_normalizer({"agent_pos": obs["agent_pos"], "action": action})
    normalizer["image"] = get_image_range_normalizer()
    return obs, action, normalizer


def encoder_features(policy, normalizer, obs, n_steps=None) -> np.ndarray:
    """Upstream's encoding: normalize, fold time into the batch, encode, unfold."""
    nobs = {
        "image": obs["image"][:, :n_steps] * 2 - 1,
        "agent_pos": normalize_np(normalizer, "agent_pos", obs["agent_pos"][:, :n_steps]),
    }
    steps = nobs["image"].shape[1]
    flat = {k: mx.array(v.reshape(B * steps, *v.shape[2:])) for k, v in nobs.items()}
    return np.array(policy.obs_encoder(flat)).reshape(B, steps, -1)


@pytest.mark.parametrize("obs_as_cond", [True, False])
def test_builds_transformer_from_shape_meta(obs_as_cond):
    policy = make_policy(obs_as_cond=obs_as_cond, n_cond_layers=1, causal_attn=False)
    assert isinstance(policy.obs_encoder, RobomimicObsEncoder)
    Do = policy.obs_feature_dim
    assert Do == 66
    dim = Da if obs_as_cond else Da + Do
    expected = TransformerForDiffusion(
        input_dim=dim,
        output_dim=dim,
        horizon=T,
        n_obs_steps=To,
        cond_dim=Do if obs_as_cond else 0,
        n_cond_layers=1,
        causal_attn=False,
        time_as_cond=True,
        obs_as_cond=obs_as_cond,
        **ARCH,
    )

    def shapes(m):
        return {k: v.shape for k, v in tree_flatten(m.parameters())}

    assert shapes(policy.model) == shapes(expected)


@pytest.mark.parametrize("obs_as_cond,pred_action_steps_only", CASES)
def test_predict_action_matches_upstream_procedure(data, obs_as_cond, pred_action_steps_only):
    obs, _, normalizer = data
    policy = make_policy(obs_as_cond=obs_as_cond, pred_action_steps_only=pred_action_steps_only)
    policy.model = AffineDenoiser()
    policy.set_normalizer(normalizer)
    policy.eval()
    key = mx.random.key(1)
    result = policy.predict_action({k: mx.array(v[:, :To]) for k, v in obs.items()}, key=key)

    features = encoder_features(policy, normalizer, obs, To)
    Do = features.shape[-1]
    conds = {}
    if obs_as_cond:
        conds["cond"] = mx.array(features)
        shape = (B, Ta if pred_action_steps_only else T, Da)
    else:
        shape = (B, T, Da + Do)
    cond_data = np.zeros(shape, np.float32)
    cond_mask = np.zeros(shape, bool)
    if not obs_as_cond:
        cond_data[:, :To, Da:] = features
        cond_mask[:, :To, Da:] = True
    nsample = reference_sample(
        AffineDenoiser(), scheduler(), STEPS, cond_data, cond_mask, key, **conds
    )
    action_pred = unnormalize_np(normalizer, "action", nsample[..., :Da])
    action = action_pred if pred_action_steps_only else action_pred[:, To - 1 : To - 1 + Ta]

    np.testing.assert_allclose(np.array(result["action_pred"]), action_pred, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(np.array(result["action"]), action, rtol=1e-4, atol=1e-2)
    assert result["action"].shape == (B, Ta, Da)


@pytest.mark.parametrize("obs_as_cond,pred_action_steps_only", CASES)
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_compute_loss_matches_hand_computed(
    data, obs_as_cond, pred_action_steps_only, prediction_type
):
    obs, action, normalizer = data
    policy = make_policy(
        prediction_type, obs_as_cond=obs_as_cond, pred_action_steps_only=pred_action_steps_only
    )
    policy.model = AffineDenoiser(0.4)
    policy.set_normalizer(normalizer)
    policy.eval()  # the centre crop, so the reference encodes the same pixels
    naction = normalize_np(normalizer, "action", action)
    conds = {}
    if obs_as_cond:
        conds["cond"] = encoder_features(policy, normalizer, obs, To)
        trajectory = naction[:, To - 1 : To - 1 + Ta] if pred_action_steps_only else naction
        mask = np.zeros(trajectory.shape, bool)
    else:
        trajectory = np.concatenate([naction, encoder_features(policy, normalizer, obs)], -1)
        mask = np.zeros(trajectory.shape, bool)
        mask[:, :To, Da:] = True
    noise = np.random.default_rng(5).normal(size=trajectory.shape).astype(np.float32)
    timesteps = np.array([0, 64])

    loss = policy.compute_loss(
        {"obs": {k: mx.array(v) for k, v in obs.items()}, "action": mx.array(action)},
        noise=mx.array(noise),
        timesteps=mx.array(timesteps),
    )

    noisy = add_noise_np(policy.noise_scheduler, trajectory, noise, timesteps)
    noisy[mask] = trajectory[mask]
    pred = affine_denoiser_np(0.4, noisy, timesteps, **conds)
    target = noise if prediction_type == "epsilon" else trajectory
    assert loss.item() == pytest.approx(masked_mse_np(pred, target, mask), rel=1e-4)


@pytest.mark.parametrize("obs_as_cond", [True, False])
def test_encoder_gradient_follows_upstream(data, obs_as_cond):
    """Condition tokens train the encoder; with inpainting upstream detaches the features, so
    the encoder gets no gradient at all."""
    obs, action, normalizer = data
    policy = make_policy(obs_as_cond=obs_as_cond, obs_encoder_group_norm=True)
    policy.set_normalizer(normalizer)
    batch = {"obs": {k: mx.array(v) for k, v in obs.items()}, "action": mx.array(action)}
    _, grads = nn.value_and_grad(policy, lambda p: p.compute_loss(batch))(policy)
    largest = max(np.abs(np.array(g)).max() for _, g in tree_flatten(grads["obs_encoder"]))
    assert (largest > 0) == obs_as_cond


def test_get_optimizer_uses_upstream_groups(data):
    policy = make_policy()  # BatchNorm encoder: its running statistics are not trainable
    policy.set_normalizer(data[2])
    before = dict(tree_flatten(policy.trainable_parameters()))
    assert {k.split(".")[0] for k in before} == {"model", "obs_encoder"}
    assert not any("running_" in k for k in before)

    optimizer = policy.get_optimizer(
        transformer_weight_decay=0.5,
        obs_encoder_weight_decay=0.25,
        learning_rate=0.1,
        betas=(0.9, 0.95),
    )
    # Zero gradients: AdamW only applies its decoupled decay, p <- p * (1 - lr * wd).
    optimizer.update(policy, tree_map(mx.zeros_like, policy.trainable_parameters()))
    after = dict(tree_flatten(policy.trainable_parameters()))
    decayed = {f"model.{n}" for n in policy.model.get_optim_groups(0.5)[0]["params"]}
    for path, value in before.items():
        if path.startswith("obs_encoder."):
            decay = 0.25
        else:
            decay = 0.5 if path in decayed else 0.0
        np.testing.assert_allclose(
            np.array(after[path]), np.array(value) * (1 - 0.1 * decay), rtol=1e-6, err_msg=path
        )


def test_compiled_sampling_equals_eager_and_a_step_lowers_the_loss(data):
    obs, action, normalizer = data
    policy = make_policy(obs_encoder_group_norm=True)
    policy.set_normalizer(normalizer)
    policy.eval()
    obs_dict = {k: mx.array(v[:, :To]) for k, v in obs.items()}
    compiled = policy.predict_action(obs_dict, key=mx.random.key(2))
    policy.compile_sampling = False
    eager = policy.predict_action(obs_dict, key=mx.random.key(2))
    np.testing.assert_allclose(
        np.array(compiled["action_pred"]), np.array(eager["action_pred"]), rtol=1e-5, atol=1e-2
    )

    policy.train()
    batch = {"obs": {k: mx.array(v) for k, v in obs.items()}, "action": mx.array(action)}
    noise = mx.array(np.random.default_rng(1).normal(size=(B, T, Da)).astype(np.float32))
    timesteps = mx.array([30, 70])

    def loss_fn(p):
        mx.random.seed(0)  # the same random crops in both evaluations
        return p.compute_loss(batch, noise=noise, timesteps=timesteps)

    optimizer = policy.get_optimizer(1e-3, 1e-6, 1e-3, (0.9, 0.95))
    loss0, grads = nn.value_and_grad(policy, loss_fn)(policy)
    optimizer.update(policy, grads)
    assert loss_fn(policy).item() < loss0.item()
