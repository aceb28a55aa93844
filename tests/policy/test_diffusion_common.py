"""The shared denoising loop, loss, conditioning helpers and optimizer groups."""

import copy

from diffusion_policy_mlx.accel.cpu_streams import CpuStreams
from diffusion_policy_mlx.accel.low_precision import SamplingWeights

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map, tree_unflatten
from policy_reference import (
    AffineDenoiser,
    add_noise_np,
    affine_denoiser_np,
    masked_mse_np,
    reference_sample,
)

from diffusion_policy_mlx import accel
from diffusion_policy_mlx.model.diffusion.conditional_unet1d import ConditionalUnet1D
from diffusion_policy_mlx.policy.diffusion_common import (
    CompiledStepCache,
    action_dim_from_shape_meta,
    conditional_sample,
    diffusion_loss,
    encode_obs_steps,
    grouped_adamw,
    obs_inpainting_condition,
    random_key,
)
from diffusion_policy_mlx.schedulers import DDIMScheduler, DDPMScheduler

B, T, D = 3, 8, 4


def ddpm(prediction_type: str = "epsilon") -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=100,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=True,
        prediction_type=prediction_type,
    )


def inpainting_problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    cond_data = rng.normal(size=(B, T, D)).astype(np.float32)
    cond_mask = rng.uniform(size=(B, T, D)) < 0.3
    global_cond = rng.normal(size=(B, 5)).astype(np.float32)
    return cond_data, cond_mask, global_cond


@pytest.fixture(params=[1, 3], ids=["one_stream", "three_streams"])
def split(request):
    """On the CPU, sample on one stream or with each of the B=3 rows on its own."""
    return CpuStreams(request.param)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("num_inference_steps", [100, 10])
def test_conditional_sample_matches_upstream_loop(compiled, num_inference_steps, split):
    cond_data, cond_mask, global_cond = inpainting_problem()
    model, scheduler, key = AffineDenoiser(), ddpm(), mx.random.key(7)
    expected = reference_sample(
        model,
        scheduler,
        num_inference_steps,
        cond_data,
        cond_mask,
        key,
        global_cond=mx.array(global_cond),
    )
    got = conditional_sample(
        model,
        scheduler,
        num_inference_steps,
        mx.array(cond_data),
        mx.array(cond_mask),
        {"global_cond": mx.array(global_cond), "local_cond": None},
        key=key,
        step_cache=CompiledStepCache() if compiled else None,
        batch_split=split,
    )
    np.testing.assert_allclose(np.array(got), expected, atol=1e-5, rtol=1e-5)
    # Inpainted entries are the condition data, bit for bit.
    np.testing.assert_array_equal(np.array(got)[cond_mask], cond_data[cond_mask])


def test_ddim_sampling_is_deterministic_given_the_initial_noise():
    """With eta=0 the key only sets the initial noise: the loop is the DDIM recursion of it."""
    cond_data, cond_mask, _ = inpainting_problem(1)
    cond_mask[:] = False
    scheduler = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    key = mx.random.key(3)
    got = conditional_sample(
        AffineDenoiser(), scheduler, 10, mx.array(cond_data), mx.array(cond_mask), {}, key=key
    )
    # Hand-rolled DDIM (eta=0, clipped x0, raw eps in the direction term) in numpy.
    acp = np.asarray(scheduler.alphas_cumprod)
    x = np.array(mx.random.normal((B, T, D), key=mx.random.split(key, 11)[0]))
    for t in range(90, -1, -10):
        eps = affine_denoiser_np(0.1, x, t)
        x0 = np.clip((x - np.sqrt(1 - acp[t]) * eps) / np.sqrt(acp[t]), -1, 1)
        acp_prev = acp[t - 10] if t >= 10 else 1.0
        x = np.sqrt(acp_prev) * x0 + np.sqrt(1 - acp_prev) * eps
    np.testing.assert_allclose(np.array(got), x, atol=1e-5)


def test_compiled_step_follows_weight_updates_without_retracing(split):
    cond_data, cond_mask, global_cond = inpainting_problem(2)
    model, scheduler, cache = AffineDenoiser(), ddpm(), CompiledStepCache()
    args = (mx.array(cond_data), mx.array(cond_mask), {"global_cond": mx.array(global_cond)})

    def sample(step_cache):
        return np.array(
            conditional_sample(
                model,
                scheduler,
                10,
                *args,
                key=mx.random.key(0),
                step_cache=step_cache,
                batch_split=split,
            )
        )

    sample(cache)
    traces = model.calls
    model.update({"w": mx.array([0.25])})
    compiled = sample(cache)
    assert model.calls == traces, "a weight update must not retrace the compiled step"
    np.testing.assert_allclose(compiled, sample(None), atol=1e-6)
    # one entry per CPU stream's chunk of the rows (one when they are not split)
    assert len(cache.entries) == max(1, len(split.chunks(B)))


def test_step_cache_keys_and_deepcopy():
    model, scheduler, cache = AffineDenoiser(), ddpm(), CompiledStepCache()
    first = cache.get(model, scheduler, 10, {})
    assert cache.get(model, scheduler, 10, {}) is first
    assert cache.get(model, scheduler, 16, {}) is not first
    model.eval()
    assert cache.get(model, scheduler, 10, {}) is not first
    assert cache.get(AffineDenoiser(), scheduler, 10, {}) is not first
    assert len(cache.entries) == 4
    # A copied policy (EMA) must not reuse steps compiled around the original model.
    assert copy.deepcopy(cache).entries == {}


def test_random_key_follows_the_global_seed():
    mx.random.seed(11)
    a = np.array(random_key())
    mx.random.seed(11)
    b = np.array(random_key())
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint32 and a.shape == (2,)
    assert not np.array_equal(a, np.array(random_key()))


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_diffusion_loss_matches_hand_computed_mse(prediction_type):
    rng = np.random.default_rng(4)
    trajectory = rng.normal(size=(B, T, D)).astype(np.float32)
    condition = rng.normal(size=(B, T, D)).astype(np.float32)
    mask = rng.uniform(size=(B, T, D)) < 0.25
    noise = rng.normal(size=(B, T, D)).astype(np.float32)
    timesteps = np.array([0, 42, 99])
    global_cond = rng.normal(size=(B, 6)).astype(np.float32)
    scheduler = ddpm(prediction_type)

    loss = diffusion_loss(
        AffineDenoiser(),
        scheduler,
        mx.array(trajectory),
        mx.array(mask),
        {"global_cond": mx.array(global_cond), "local_cond": None},
        condition_data=mx.array(condition),
        noise=mx.array(noise),
        timesteps=mx.array(timesteps),
    )

    noisy = add_noise_np(scheduler, trajectory, noise, timesteps)
    noisy[mask] = condition[mask]
    pred = affine_denoiser_np(0.1, noisy, timesteps, global_cond=global_cond)
    target = noise if prediction_type == "epsilon" else trajectory
    assert loss.item() == pytest.approx(masked_mse_np(pred, target, mask), rel=1e-5)


def test_diffusion_loss_draws_timesteps_and_noise_from_the_global_generator():
    trajectory = mx.array(np.random.default_rng(5).normal(size=(B, T, D)).astype(np.float32))
    mask = mx.zeros((B, T, D), mx.bool_)
    args = (AffineDenoiser(), ddpm(), trajectory, mask, {})
    mx.random.seed(2)
    a = diffusion_loss(*args).item()
    mx.random.seed(2)
    assert diffusion_loss(*args).item() == a
    assert diffusion_loss(*args).item() != a


def test_diffusion_loss_rejects_v_prediction():
    with pytest.raises(ValueError, match="v_prediction"):
        diffusion_loss(
            AffineDenoiser(),
            ddpm("v_prediction"),
            mx.zeros((B, T, D)),
            mx.zeros((B, T, D), mx.bool_),
            {},
        )


def test_diffusion_loss_gradient_under_compile():
    """The loss is pure array code: value_and_grad inside mx.compile with the random state
    threaded through gives the eager result for the same seed."""
    rng = np.random.default_rng(6)
    trajectory = mx.array(rng.normal(size=(B, T, D)).astype(np.float32))
    mask = mx.array(rng.uniform(size=(B, T, D)) < 0.3)
    model, scheduler = AffineDenoiser(), ddpm()

    def loss_fn(m):
        return diffusion_loss(m, scheduler, trajectory, mask, {})

    grad_fn = nn.value_and_grad(model, loss_fn)

    def step():
        return grad_fn(model)

    compiled = mx.compile(step, inputs=[model.state, mx.random.state], outputs=[mx.random.state])
    mx.random.seed(9)
    eager_loss, eager_grads = step()
    mx.random.seed(9)
    loss, grads = compiled()
    assert loss.item() == pytest.approx(eager_loss.item(), rel=1e-5)
    np.testing.assert_allclose(np.array(grads["w"]), np.array(eager_grads["w"]), rtol=1e-5)
    assert abs(grads["w"].item()) > 0


def test_obs_inpainting_condition():
    features = mx.array(np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3) + 1)
    data, mask = obs_inpainting_condition(features, horizon=4, action_dim=2)
    assert data.shape == mask.shape == (2, 4, 5)
    expected_mask = np.zeros((2, 4, 5), bool)
    expected_mask[:, :2, 2:] = True
    np.testing.assert_array_equal(np.array(mask), expected_mask)
    expected = np.zeros((2, 4, 5), np.float32)
    expected[:, :2, 2:] = np.array(features)
    np.testing.assert_array_equal(np.array(data), expected)


def test_encode_obs_steps_runs_the_encoder_once_over_all_steps():
    calls = []

    def encoder(obs):
        calls.append({k: v.shape for k, v in obs.items()})
        return mx.concatenate([obs["image"].mean(axis=(1, 2, 3))[:, None], obs["pos"]], axis=-1)

    image = mx.array(np.random.default_rng(0).uniform(size=(2, 5, 3, 4, 4)).astype(np.float32))
    pos = mx.array(np.arange(2 * 5 * 2, dtype=np.float32).reshape(2, 5, 2))
    features = encode_obs_steps(encoder, {"image": image, "pos": pos}, 3)
    assert calls == [{"image": (6, 3, 4, 4), "pos": (6, 2)}]
    assert features.shape == (2, 3, 3)
    np.testing.assert_allclose(
        np.array(features[..., 0]), np.array(image[:, :3].mean(axis=(2, 3, 4))), rtol=1e-6
    )
    np.testing.assert_array_equal(np.array(features[..., 1:]), np.array(pos[:, :3]))
    assert encode_obs_steps(encoder, {"image": image, "pos": pos}).shape == (2, 5, 3)


def test_action_dim_from_shape_meta():
    assert action_dim_from_shape_meta({"action": {"shape": [7]}}, "P") == 7
    with pytest.raises(ValueError, match=r"P: shape_meta.action.shape must be \[action_dim\]"):
        action_dim_from_shape_meta({"action": {"shape": [2, 3]}}, "P")


def test_grouped_adamw_applies_each_groups_weight_decay():
    module = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    module.freeze(keys=["bias"], recurse=True, strict=False)
    module.layers[1].unfreeze(keys=["bias"], recurse=False)
    decays = {
        "layers.0.weight": 0.5,
        "layers.1.weight": 0.1,
        "layers.1.bias": 0.0,
    }
    optimizer = grouped_adamw(module, decays, learning_rate=0.2, betas=(0.9, 0.95))
    before = dict(tree_flatten(module.parameters()))
    # Zero gradients leave only the decoupled decay: p <- p * (1 - lr * wd).
    grads = {k: mx.zeros_like(v) for k, v in tree_flatten(module.trainable_parameters())}
    optimizer.update(module, tree_unflatten(list(grads.items())))
    after = dict(tree_flatten(module.parameters()))
    for path, decay in decays.items():
        np.testing.assert_allclose(
            np.array(after[path]), np.array(before[path]) * (1 - 0.2 * decay), rtol=1e-6
        )
    # Frozen parameters are untouched.
    np.testing.assert_array_equal(
        np.array(after["layers.0.bias"]), np.array(before["layers.0.bias"])
    )

    with pytest.raises(ValueError, match=r"without a group \['layers.1.bias'\]"):
        grouped_adamw(
            module, {k: v for k, v in decays.items() if k != "layers.1.bias"}, 0.1, (0.9, 0.95)
        )


@pytest.mark.parametrize(
    "dtype, batch, fixture, tolerance",
    # float16 copies for the few-row kernel at batch 1; bfloat16 on AMX for a whole batch, on
    # one stream so that its B * T = 24 rows are past the few-row kernel's 16
    [("float16", 1, "cpu_kernels", 2e-2), ("bfloat16", B, "amx", 5e-2)],
)
def test_low_precision_weights_sample_near_float32_and_follow_weight_updates(
    request, cpu_config, dtype, batch, fixture, tolerance
):
    """accel.cpu_weights=float16 or bfloat16: the compiled loop multiplies low-precision
    copies of the U-Net's convolution weights (results near, not equal to, float32's),
    refreshed after an update."""
    kernels = request.getfixturevalue(fixture)
    mx.random.seed(0)
    model = ConditionalUnet1D(D, global_cond_dim=5, down_dims=[16, 32], kernel_size=3, n_groups=4)
    model = accel.swap_layers(model, cpu_config(kernels))
    model.eval()
    cond_data, cond_mask, global_cond = inpainting_problem(4)
    args = (
        mx.array(cond_data[:batch]),
        mx.array(cond_mask[:batch]),
        {"global_cond": mx.array(global_cond[:batch])},
    )

    def sample(cache, weights=None):
        return np.array(
            conditional_sample(
                model, ddpm(), 10, *args, key=mx.random.key(1), step_cache=cache, weights=weights
            )
        )

    with mx.stream(mx.cpu):
        full = sample(CompiledStepCache())
        weights = SamplingWeights(getattr(mx, dtype))
        cache = CompiledStepCache()
        low = sample(cache, weights)
        assert len(weights.arrays) > 0
        assert 0 < np.abs(low - full).max() < tolerance
        # the eager loop reads the model's own float32 weights
        np.testing.assert_allclose(sample(None, weights), full, atol=1e-5)
        model.update(tree_map(lambda p: p * 1.5, model.parameters()))
        updated = sample(cache, weights)
        updated_full = sample(CompiledStepCache())
    assert np.abs(updated - low).max() > 0.1
    assert np.abs(updated - updated_full).max() < tolerance
