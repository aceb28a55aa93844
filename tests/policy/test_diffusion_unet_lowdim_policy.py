"""DiffusionUnetLowdimPolicy: upstream's conditioning modes, action slicing and loss."""

import copy

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
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

from diffusion_policy_mlx.model.diffusion.conditional_unet1d import ConditionalUnet1D
from diffusion_policy_mlx.policy.diffusion_unet_lowdim_policy import DiffusionUnetLowdimPolicy
from diffusion_policy_mlx.schedulers import DDIMScheduler, DDPMScheduler

B, T, To, Ta, Do, Da = 3, 8, 2, 4, 5, 2
STEPS = 10

# (mode, pred_action_steps_only, oa_step_convention)
CASES = [
    ("global", False, False),
    ("global", False, True),
    ("global", True, True),
    ("local", False, True),
    ("inpaint", False, False),
    ("inpaint", False, True),
]


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


def make_policy(model, mode, pred_action_steps_only=False, oa=False, noise_scheduler=None):
    policy = DiffusionUnetLowdimPolicy(
        model=model,
        noise_scheduler=noise_scheduler or scheduler(),
        horizon=T,
        obs_dim=Do,
        action_dim=Da,
        n_action_steps=Ta,
        n_obs_steps=To,
        num_inference_steps=STEPS,
        obs_as_local_cond=mode == "local",
        obs_as_global_cond=mode == "global",
        pred_action_steps_only=pred_action_steps_only,
        oa_step_convention=oa,
    )
    return policy


def tiny_unet(mode) -> ConditionalUnet1D:
    return ConditionalUnet1D(
        input_dim=Da + Do if mode == "inpaint" else Da,
        local_cond_dim=Do if mode == "local" else None,
        global_cond_dim=Do * To if mode == "global" else None,
        diffusion_step_embed_dim=16,
        down_dims=[16, 32],
        kernel_size=3,
        n_groups=4,
    )


def reference_condition(nobs, mode, pred_action_steps_only):
    """Upstream's predict_action set-up, with numpy in-place writes."""
    conds = {}
    if mode == "local":
        local_cond = np.zeros((B, T, Do), np.float32)
        local_cond[:, :To] = nobs[:, :To]
        conds["local_cond"] = mx.array(local_cond)
        shape = (B, T, Da)
    elif mode == "global":
        conds["global_cond"] = mx.array(nobs[:, :To].reshape(B, -1))
        shape = (B, Ta if pred_action_steps_only else T, Da)
    else:
        shape = (B, T, Da + Do)
    cond_data = np.zeros(shape, np.float32)
    cond_mask = np.zeros(shape, bool)
    if mode == "inpaint":
        cond_data[:, :To, Da:] = nobs[:, :To]
        cond_mask[:, :To, Da:] = True
    return cond_data, cond_mask, conds


@pytest.mark.parametrize("mode,pred_action_steps_only,oa", CASES)
def test_predict_action_matches_upstream_procedure(data, mode, pred_action_steps_only, oa):
    obs, _, normalizer = data
    policy = make_policy(AffineDenoiser(), mode, pred_action_steps_only, oa)
    policy.set_normalizer(normalizer)
    key = mx.random.key(1)
    result = policy.predict_action({"obs": mx.array(obs[:, :To])}, key=key)

    nobs = normalize_np(normalizer, "obs", obs[:, :To])
    cond_data, cond_mask, conds = reference_condition(nobs, mode, pred_action_steps_only)
    nsample = reference_sample(
        AffineDenoiser(), scheduler(), STEPS, cond_data, cond_mask, key, **conds
    )
    action_pred = unnormalize_np(normalizer, "action", nsample[..., :Da])
    start = To - 1 if oa else To
    action = action_pred if pred_action_steps_only else action_pred[:, start : start + Ta]

    np.testing.assert_allclose(np.array(result["action_pred"]), action_pred, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.array(result["action"]), action, rtol=1e-5, atol=1e-4)
    assert result["action"].shape == (B, Ta, Da)
    if mode == "inpaint":
        obs_pred = unnormalize_np(normalizer, "obs", nsample[..., Da:])
        np.testing.assert_allclose(np.array(result["obs_pred"]), obs_pred, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(
            np.array(result["action_obs_pred"]), obs_pred[:, start : start + Ta], atol=1e-4
        )
        # The observed steps come back as given (up to the normalize round trip).
        np.testing.assert_allclose(np.array(result["obs_pred"][:, :To]), obs[:, :To], atol=1e-4)
    else:
        assert set(result) == {"action", "action_pred"}


@pytest.mark.parametrize("mode,pred_action_steps_only,oa", CASES)
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_compute_loss_matches_hand_computed(
    data, mode, pred_action_steps_only, oa, prediction_type
):
    obs, action, normalizer = data
    policy = make_policy(
        AffineDenoiser(0.3), mode, pred_action_steps_only, oa, scheduler(prediction_type)
    )
    policy.set_normalizer(normalizer)

    nobs = normalize_np(normalizer, "obs", obs)
    naction = normalize_np(normalizer, "action", action)
    conds = {}
    trajectory = naction
    mask = np.zeros(naction.shape, bool)
    if mode == "local":
        conds["local_cond"] = np.concatenate([nobs[:, :To], np.zeros_like(nobs[:, To:])], 1)
    elif mode == "global":
        conds["global_cond"] = nobs[:, :To].reshape(B, -1)
        if pred_action_steps_only:
            start = To - 1 if oa else To
            trajectory = naction[:, start : start + Ta]
            mask = np.zeros(trajectory.shape, bool)
    else:
        trajectory = np.concatenate([naction, nobs], axis=-1)
        mask = np.zeros(trajectory.shape, bool)
        mask[:, :To, Da:] = True
    rng = np.random.default_rng(3)
    noise = rng.normal(size=trajectory.shape).astype(np.float32)
    timesteps = np.array([3, 50, 99])

    loss = policy.compute_loss(
        {"obs": mx.array(obs), "action": mx.array(action)},
        noise=mx.array(noise),
        timesteps=mx.array(timesteps),
    )

    noisy = add_noise_np(policy.noise_scheduler, trajectory, noise, timesteps)
    noisy[mask] = trajectory[mask]
    pred = affine_denoiser_np(0.3, noisy, timesteps, **conds)
    target = noise if prediction_type == "epsilon" else trajectory
    assert loss.item() == pytest.approx(masked_mse_np(pred, target, mask), rel=1e-5)


@pytest.mark.parametrize("mode", ["global", "local", "inpaint"])
def test_compiled_sampling_equals_eager_with_the_unet(data, mode):
    obs, _, normalizer = data
    policy = make_policy(tiny_unet(mode), mode, oa=True)
    policy.set_normalizer(normalizer)
    policy.eval()
    obs_dict = {"obs": mx.array(obs[:, :To])}
    compiled = policy.predict_action(obs_dict, key=mx.random.key(5))
    policy.compile_sampling = False
    eager = policy.predict_action(obs_dict, key=mx.random.key(5))
    for k in compiled:
        np.testing.assert_allclose(np.array(compiled[k]), np.array(eager[k]), atol=1e-4, rtol=1e-5)
    assert np.isfinite(np.array(compiled["action_pred"])).all()


def test_ddim_scheduler_and_step_kwargs_from_config(data):
    obs, _, normalizer = data
    ddim = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    policy = make_policy(AffineDenoiser(), "global", noise_scheduler=ddim)
    policy.set_normalizer(normalizer)
    # eta=0 is deterministic: the key only draws the initial noise, so eta reaching
    # scheduler.step is visible through eta=1 giving a different result.
    a = policy.predict_action({"obs": mx.array(obs[:, :To])}, key=mx.random.key(0))
    stochastic = DiffusionUnetLowdimPolicy(
        AffineDenoiser(), ddim, T, Do, Da, Ta, To, STEPS, obs_as_global_cond=True, eta=1.0
    )
    stochastic.set_normalizer(normalizer)
    assert dict(stochastic.kwargs) == {"eta": 1.0}
    b = stochastic.predict_action({"obs": mx.array(obs[:, :To])}, key=mx.random.key(0))
    assert not np.allclose(np.array(a["action"]), np.array(b["action"]))


def test_num_inference_steps_defaults_to_training_steps():
    policy = DiffusionUnetLowdimPolicy(
        AffineDenoiser(), scheduler(), T, Do, Da, Ta, To, obs_as_global_cond=True
    )
    assert policy.num_inference_steps == 100


def test_normalizer_is_not_trainable_and_one_step_lowers_the_loss(data):
    obs, action, normalizer = data
    policy = make_policy(tiny_unet("global"), "global")
    policy.set_normalizer(normalizer)
    trainable = [k for k, _ in tree_flatten(policy.trainable_parameters())]
    assert trainable and all(k.startswith("model.") for k in trainable)
    assert any(k.startswith("normalizer.") for k, _ in tree_flatten(policy.parameters()))

    batch = {"obs": mx.array(obs), "action": mx.array(action)}
    noise = mx.array(np.random.default_rng(1).normal(size=(B, T, Da)).astype(np.float32))
    timesteps = mx.array([10, 40, 70])

    def loss_fn(p):
        return p.compute_loss(batch, noise=noise, timesteps=timesteps)

    loss_and_grad = nn.value_and_grad(policy, loss_fn)
    optimizer = optim.AdamW(learning_rate=1e-3)
    normalizer_before = policy.normalizer.state_dict()
    loss0, grads = loss_and_grad(policy)
    optimizer.update(policy, grads)
    loss1 = loss_fn(policy)
    assert loss1.item() < loss0.item()
    for k, v in policy.normalizer.state_dict().items():
        np.testing.assert_array_equal(v, normalizer_before[k])


def test_compute_loss_inside_a_compiled_training_step(data):
    obs, action, normalizer = data
    policy = make_policy(tiny_unet("inpaint"), "inpaint")
    policy.set_normalizer(normalizer)
    batch = {"obs": mx.array(obs), "action": mx.array(action)}
    optimizer = optim.AdamW(learning_rate=1e-3)
    loss_and_grad = nn.value_and_grad(policy, lambda p: p.compute_loss(batch))
    state = [policy.state, optimizer.state, mx.random.state]

    def train_step():
        loss, grads = loss_and_grad(policy)
        optimizer.update(policy, grads)
        return loss

    compiled = mx.compile(train_step, inputs=state, outputs=state)
    mx.random.seed(4)
    eager_first = policy.compute_loss(batch).item()
    mx.random.seed(4)
    losses = [compiled().item() for _ in range(3)]
    assert losses[0] == pytest.approx(eager_first, rel=1e-5)
    assert len(set(losses)) == 3  # fresh noise and timesteps each step, weights move


def test_deepcopy_gives_an_independent_policy(data):
    """The EMA copy: same predictions, then its own weights and its own compiled steps."""
    obs, _, normalizer = data
    policy = make_policy(tiny_unet("global"), "global")
    policy.set_normalizer(normalizer)
    policy.eval()
    obs_dict = {"obs": mx.array(obs[:, :To])}
    before = np.array(policy.predict_action(obs_dict, key=mx.random.key(2))["action"])
    twin = copy.deepcopy(policy)
    np.testing.assert_array_equal(
        np.array(twin.predict_action(obs_dict, key=mx.random.key(2))["action"]), before
    )
    twin.model.update(tree_map(lambda p: p + 0.05, twin.model.parameters()))
    changed = np.array(twin.predict_action(obs_dict, key=mx.random.key(2))["action"])
    assert not np.allclose(changed, before)
    np.testing.assert_array_equal(
        np.array(policy.predict_action(obs_dict, key=mx.random.key(2))["action"]), before
    )


def test_bad_configuration_and_inputs_raise_clear_errors(data):
    obs, _, normalizer = data
    with pytest.raises(ValueError, match="obs_as_local_cond and obs_as_global_cond"):
        DiffusionUnetLowdimPolicy(
            AffineDenoiser(),
            scheduler(),
            T,
            Do,
            Da,
            Ta,
            To,
            obs_as_local_cond=True,
            obs_as_global_cond=True,
        )
    with pytest.raises(ValueError, match="pred_action_steps_only=True needs obs_as_global_cond"):
        DiffusionUnetLowdimPolicy(
            AffineDenoiser(), scheduler(), T, Do, Da, Ta, To, pred_action_steps_only=True
        )
    policy = make_policy(AffineDenoiser(), "global")
    policy.set_normalizer(fit_normalizer({"obs": np.ones((4, 3)), "action": np.ones((4, Da))}))
    with pytest.raises(
        ValueError, match="3 features per step; the policy was built with obs_dim=5"
    ):
        policy.predict_action({"obs": mx.ones((B, To, 3))})
    with pytest.raises(KeyError, match="needs obs_dict\\['obs'\\]"):
        policy.predict_action({"state": mx.ones((B, To, Do))})
