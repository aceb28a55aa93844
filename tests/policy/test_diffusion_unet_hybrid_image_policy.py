"""DiffusionUnetHybridImagePolicy: the robomimic-style encoder wired into the U-Net policy."""

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten
from policy_reference import fit_normalizer, normalize_np, reference_sample, unnormalize_np

from diffusion_policy_mlx.model.common.normalize_util import get_image_range_normalizer
from diffusion_policy_mlx.model.diffusion.conditional_unet1d import ConditionalUnet1D
from diffusion_policy_mlx.model.vision.robomimic_obs_encoder import RobomimicObsEncoder
from diffusion_policy_mlx.policy.diffusion_unet_hybrid_image_policy import (
    DiffusionUnetHybridImagePolicy,
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
ARCH = dict(diffusion_step_embed_dim=16, down_dims=(16, 32), kernel_size=3, n_groups=4)


def scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")


def make_policy(**kwargs) -> DiffusionUnetHybridImagePolicy:
    kwargs = {
        "crop_shape": (28, 28),
        "obs_encoder_group_norm": True,
        "eval_fixed_crop": True,
        **ARCH,
        **kwargs,
    }
    return DiffusionUnetHybridImagePolicy(
        SHAPE_META, scheduler(), T, Ta, To, num_inference_steps=STEPS, **kwargs
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


def shapes(module: nn.Module) -> dict:
    return {k: v.shape for k, v in tree_flatten(module.parameters())}


@pytest.mark.parametrize("obs_as_global_cond", [True, False])
def test_builds_encoder_and_unet_from_shape_meta(obs_as_global_cond):
    policy = make_policy(obs_as_global_cond=obs_as_global_cond, cond_predict_scale=False)
    assert isinstance(policy.obs_encoder, RobomimicObsEncoder)
    assert policy.obs_feature_dim == 64 + 2
    Do = policy.obs_feature_dim
    expected = ConditionalUnet1D(
        input_dim=Da if obs_as_global_cond else Da + Do,
        global_cond_dim=Do * To if obs_as_global_cond else None,
        cond_predict_scale=False,
        **{**ARCH, "down_dims": list(ARCH["down_dims"])},
    )
    assert shapes(policy.model) == shapes(expected)
    assert shapes(policy.obs_encoder) == shapes(
        RobomimicObsEncoder(
            SHAPE_META, crop_shape=(28, 28), obs_encoder_group_norm=True, eval_fixed_crop=True
        )
    )
    assert policy.mask_generator.obs_dim == (0 if obs_as_global_cond else Do)


def test_encoder_options_reach_the_encoder():
    policy = make_policy(crop_shape=None, obs_encoder_group_norm=False)
    names = [type(m).__name__ for _, m in policy.obs_encoder.named_modules()]
    assert "BatchNorm" in names and "GroupNorm" not in names
    assert policy.obs_encoder.obs_randomizers == {}
    names = [type(m).__name__ for _, m in make_policy().obs_encoder.named_modules()]
    assert "GroupNorm" in names and "BatchNorm" not in names


@pytest.mark.parametrize("obs_as_global_cond", [True, False])
def test_predict_action_matches_upstream_procedure(data, obs_as_global_cond):
    obs, _, normalizer = data
    policy = make_policy(obs_as_global_cond=obs_as_global_cond)
    policy.set_normalizer(normalizer)
    policy.eval()
    key = mx.random.key(0)
    result = policy.predict_action({k: mx.array(v[:, :To]) for k, v in obs.items()}, key=key)

    # Upstream's steps, with the policy's own (eval-mode) encoder and U-Net.
    nobs = {
        "image": obs["image"][:, :To] * 2 - 1,
        "agent_pos": normalize_np(normalizer, "agent_pos", obs["agent_pos"][:, :To]),
    }
    flat = {k: mx.array(v.reshape(B * To, *v.shape[2:])) for k, v in nobs.items()}
    features = np.array(policy.obs_encoder(flat)).reshape(B, To, -1)
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
    nsample = reference_sample(policy.model, scheduler(), STEPS, cond_data, cond_mask, key, **conds)
    action_pred = unnormalize_np(normalizer, "action", nsample[..., :Da])

    np.testing.assert_allclose(np.array(result["action_pred"]), action_pred, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(
        np.array(result["action"]), action_pred[:, To - 1 : To - 1 + Ta], rtol=1e-4, atol=1e-2
    )


def test_training_step_lowers_the_loss_and_leaves_the_normalizer(data):
    obs, action, normalizer = data
    policy = make_policy()
    policy.set_normalizer(normalizer)
    trainable = [k for k, _ in tree_flatten(policy.trainable_parameters())]
    assert {k.split(".")[0] for k in trainable} == {"model", "obs_encoder"}

    batch = {"obs": {k: mx.array(v) for k, v in obs.items()}, "action": mx.array(action)}
    noise = mx.array(np.random.default_rng(1).normal(size=(B, T, Da)).astype(np.float32))
    timesteps = mx.array([30, 70])

    def loss_fn(p):
        mx.random.seed(0)  # the same random crops in both evaluations
        return p.compute_loss(batch, noise=noise, timesteps=timesteps)

    optimizer = optim.AdamW(learning_rate=1e-3)
    loss0, grads = nn.value_and_grad(policy, loss_fn)(policy)
    encoder_grads = [v for _, v in tree_flatten(grads["obs_encoder"])]
    assert any(np.abs(np.array(g)).max() > 0 for g in encoder_grads)
    optimizer.update(policy, grads)
    assert loss_fn(policy).item() < loss0.item()
