"""DiffusionUnetImagePolicy: obs encoder features as global condition or inpainted."""

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten
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
from diffusion_policy_mlx.model.vision.multi_image_obs_encoder import MultiImageObsEncoder
from diffusion_policy_mlx.policy.diffusion_unet_image_policy import DiffusionUnetImagePolicy
from diffusion_policy_mlx.schedulers import DDPMScheduler

B, T, To, Ta, Da = 2, 8, 2, 4, 2
C, H, W = 3, 12, 12
STEPS = 8
SHAPE_META = {
    "obs": {
        "image": {"shape": [C, H, W], "type": "rgb"},
        "agent_pos": {"shape": [2], "type": "low_dim"},
    },
    "action": {"shape": [Da]},
}


class MeanPoolEncoder(nn.Module):
    """``[w * per-channel image mean, agent_pos]``: a feature map known in closed form."""

    def __init__(self):
        super().__init__()
        self.w = mx.array([0.5])
        self.calls = 0

    def __call__(self, obs):
        self.calls += 1
        pooled = obs["image"].mean(axis=(2, 3)) * self.w
        return mx.concatenate([pooled, obs["agent_pos"]], axis=-1)

    def output_shape(self):
        return (C + 2,)


def mean_pool_np(image, agent_pos, w=0.5):
    return np.concatenate([image.mean(axis=(-2, -1)) * w, agent_pos], axis=-1)


def scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type
    )


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(B, T, C, H, W)).astype(np.float32)
    agent_pos = (rng.normal(size=(B, T, 2)) * 50 + 200).astype(np.float32)
    action = (rng.normal(size=(B, T, Da)) * 40 + 250).astype(np.float32)
    normalizer = fit_normalizer({"agent_pos": agent_pos, "action": action})
    normalizer["image"] = get_image_range_normalizer()
    return {"image": image, "agent_pos": agent_pos}, action, normalizer


def make_policy(obs_encoder, obs_as_global_cond, prediction_type="epsilon"):
    return DiffusionUnetImagePolicy(
        shape_meta=SHAPE_META,
        noise_scheduler=scheduler(prediction_type),
        obs_encoder=obs_encoder,
        horizon=T,
        n_action_steps=Ta,
        n_obs_steps=To,
        num_inference_steps=STEPS,
        obs_as_global_cond=obs_as_global_cond,
        diffusion_step_embed_dim=16,
        down_dims=(16, 32),
        kernel_size=3,
        n_groups=4,
    )


def normalized_features_np(normalizer, obs, n_steps=None):
    image = obs["image"][:, :n_steps] * 2 - 1
    pos = normalize_np(normalizer, "agent_pos", obs["agent_pos"][:, :n_steps])
    return mean_pool_np(image, pos)


@pytest.mark.parametrize("obs_as_global_cond", [True, False])
def test_predict_action_matches_upstream_procedure(data, obs_as_global_cond):
    obs, _, normalizer = data
    policy = make_policy(MeanPoolEncoder(), obs_as_global_cond)
    assert policy.obs_feature_dim == C + 2
    policy.model = AffineDenoiser()
    policy.set_normalizer(normalizer)
    key = mx.random.key(3)
    # Extra steps beyond n_obs_steps are ignored, as upstream.
    result = policy.predict_action({k: mx.array(v[:, : To + 1]) for k, v in obs.items()}, key=key)
    assert policy.obs_encoder.calls == 1, "the encoder must run once per predict_action"

    features = normalized_features_np(normalizer, obs, To)
    Do = features.shape[-1]
    conds = {}
    if obs_as_global_cond:
        conds["global_cond"] = mx.array(features.reshape(B, -1))
        shape = (B, T, Da)
    else:
        shape = (B, T, Da + Do)
    cond_data = np.zeros(shape, np.float32)
    cond_mask = np.zeros(shape, bool)
    if not obs_as_global_cond:
        cond_data[:, :To, Da:] = features
        cond_mask[:, :To, Da:] = True
    nsample = reference_sample(
        AffineDenoiser(), scheduler(), STEPS, cond_data, cond_mask, key, **conds
    )
    action_pred = unnormalize_np(normalizer, "action", nsample[..., :Da])

    np.testing.assert_allclose(np.array(result["action_pred"]), action_pred, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(
        np.array(result["action"]), action_pred[:, To - 1 : To - 1 + Ta], rtol=1e-5, atol=1e-3
    )
    assert set(result) == {"action", "action_pred"}


@pytest.mark.parametrize("obs_as_global_cond", [True, False])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_compute_loss_matches_hand_computed(data, obs_as_global_cond, prediction_type):
    obs, action, normalizer = data
    policy = make_policy(MeanPoolEncoder(), obs_as_global_cond, prediction_type)
    policy.model = AffineDenoiser(0.7)
    policy.set_normalizer(normalizer)
    naction = normalize_np(normalizer, "action", action)
    conds = {}
    if obs_as_global_cond:
        conds["global_cond"] = normalized_features_np(normalizer, obs, To).reshape(B, -1)
        trajectory = naction
        mask = np.zeros(trajectory.shape, bool)
    else:
        # Upstream encodes every step of the horizon here, not only the first To.
        trajectory = np.concatenate([naction, normalized_features_np(normalizer, obs)], axis=-1)
        mask = np.zeros(trajectory.shape, bool)
        mask[:, :To, Da:] = True
    noise = np.random.default_rng(2).normal(size=trajectory.shape).astype(np.float32)
    timesteps = np.array([1, 98])

    loss = policy.compute_loss(
        {"obs": {k: mx.array(v) for k, v in obs.items()}, "action": mx.array(action)},
        noise=mx.array(noise),
        timesteps=mx.array(timesteps),
    )

    noisy = add_noise_np(policy.noise_scheduler, trajectory, noise, timesteps)
    noisy[mask] = trajectory[mask]
    pred = affine_denoiser_np(0.7, noisy, timesteps, **conds)
    target = noise if prediction_type == "epsilon" else trajectory
    assert loss.item() == pytest.approx(masked_mse_np(pred, target, mask), rel=1e-5)


@pytest.mark.parametrize("obs_as_global_cond", [True, False])
def test_encoder_learns_through_the_condition(data, obs_as_global_cond):
    """As upstream: the encoder gets gradient through the global condition, and with
    inpainting through the inpainted features (the target itself carries none)."""
    obs, action, normalizer = data
    policy = make_policy(MeanPoolEncoder(), obs_as_global_cond)
    policy.set_normalizer(normalizer)
    batch = {"obs": {k: mx.array(v) for k, v in obs.items()}, "action": mx.array(action)}
    _, grads = nn.value_and_grad(policy, lambda p: p.compute_loss(batch))(policy)
    assert abs(grads["obs_encoder"]["w"].item()) > 0


def tiny_rgb_model() -> nn.Module:
    """(N, H, W, C) -> (N, 8): a conv, ReLU and global average pool."""

    class TinyCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(C, 8, 3, stride=2)

        def __call__(self, x):
            return nn.relu(self.conv(x)).mean(axis=(1, 2))

    return TinyCNN()


@pytest.mark.parametrize("obs_as_global_cond", [True, False])
def test_with_multi_image_obs_encoder(data, obs_as_global_cond):
    obs, action, normalizer = data
    encoder = MultiImageObsEncoder(SHAPE_META, tiny_rgb_model(), crop_shape=(10, 10))
    policy = make_policy(encoder, obs_as_global_cond)
    assert policy.obs_feature_dim == 8 + 2
    policy.set_normalizer(normalizer)

    trainable = [k for k, _ in tree_flatten(policy.trainable_parameters())]
    assert any(k.startswith("obs_encoder.") for k in trainable)
    assert not any(k.startswith("normalizer.") for k in trainable)

    policy.eval()
    obs_dict = {k: mx.array(v[:, :To]) for k, v in obs.items()}
    compiled = policy.predict_action(obs_dict, key=mx.random.key(8))
    policy.compile_sampling = False
    eager = policy.predict_action(obs_dict, key=mx.random.key(8))
    np.testing.assert_allclose(
        np.array(compiled["action_pred"]), np.array(eager["action_pred"]), rtol=1e-5, atol=1e-3
    )

    policy.train()
    batch = {"obs": {k: mx.array(v) for k, v in obs.items()}, "action": mx.array(action)}
    Do = policy.obs_feature_dim
    noise = mx.array(
        np.random.default_rng(0)
        .normal(size=(B, T, Da if obs_as_global_cond else Da + Do))
        .astype(np.float32)
    )
    timesteps = mx.array([20, 60])

    def loss_fn(p):
        mx.random.seed(0)  # the same random crop in both evaluations
        return p.compute_loss(batch, noise=noise, timesteps=timesteps)

    optimizer = optim.AdamW(learning_rate=1e-3)
    loss0, grads = nn.value_and_grad(policy, loss_fn)(policy)
    optimizer.update(policy, grads)
    assert loss_fn(policy).item() < loss0.item()


def test_action_shape_must_be_one_dimensional():
    meta = {**SHAPE_META, "action": {"shape": [2, 2]}}
    with pytest.raises(ValueError, match=r"shape_meta.action.shape must be \[action_dim\]"):
        DiffusionUnetImagePolicy(meta, scheduler(), MeanPoolEncoder(), T, Ta, To)
