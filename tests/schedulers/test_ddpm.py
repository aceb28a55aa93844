"""DDPMScheduler against diffusers 0.11.1 recordings (ddpm.safetensors)."""

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file

from diffusion_policy_mlx.schedulers import DDPMScheduler

KWARGS = dict(
    num_train_timesteps=100,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="squaredcos_cap_v2",
    variance_type="fixed_small",
    clip_sample=True,
)


@pytest.fixture(scope="module")
def ref(fixtures_dir: Path) -> dict[str, np.ndarray]:
    return load_file(fixtures_dir / "ddpm.safetensors")


def _model(x: mx.array, t: int) -> mx.array:
    # the fixture's stand-in denoiser, in float32 like torch: 0.1*x + float32(0.01*t)
    return mx.array(0.1, mx.float32) * x + mx.array(0.01 * t, mx.float32)


def test_schedule_tables_match_diffusers(ref):
    s = DDPMScheduler(**KWARGS)
    np.testing.assert_array_equal(np.array(s.betas), ref["output.betas"])
    np.testing.assert_array_equal(np.array(s.alphas), ref["output.alphas"])
    np.testing.assert_array_equal(np.array(s.alphas_cumprod), ref["output.alphas_cumprod"])
    np.testing.assert_array_equal(np.array(s.variance), ref["output.variance_fixed_small"])
    assert s.config.num_train_timesteps == 100 and s.config.prediction_type == "epsilon"
    assert len(s) == 100


def test_add_noise_matches_diffusers(ref):
    s = DDPMScheduler(**KWARGS)
    out = s.add_noise(
        mx.array(ref["input.add_noise.original_samples"]),
        mx.array(ref["input.add_noise.noise"]),
        mx.array(ref["input.add_noise.timesteps"]),
    )
    np.testing.assert_allclose(np.array(out), ref["output.add_noise.noisy_samples"], atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_each_step_matches_diffusers(ref, prediction_type):
    s = DDPMScheduler(**KWARGS, prediction_type=prediction_type)
    s.set_timesteps(100)
    timesteps = np.array(s.timesteps)
    np.testing.assert_array_equal(timesteps, ref[f"input.{prediction_type}.timesteps"])
    out = f"output.{prediction_type}"
    for i, t in enumerate(timesteps.tolist()):
        step = s.step(
            mx.array(ref[f"{out}.model_output"][i]),
            t,
            mx.array(ref[f"{out}.sample_in"][i]),
            variance_noise=mx.array(ref[f"input.{prediction_type}.variance_noise"][i]),
        )
        # x0 = (x - sqrt(1-acp) eps) / sqrt(acp) magnifies 1-ulp differences between torch's
        # float32 pow(., 0.5) and a correctly rounded sqrt by 1/sqrt(acp[t]) (16x at t=95)
        x0_atol = 1e-6 / np.sqrt(ref["output.alphas_cumprod"][t])
        np.testing.assert_allclose(
            np.array(step.pred_original_sample), ref[f"{out}.pred_original_sample"][i], atol=x0_atol
        )
        np.testing.assert_allclose(
            np.array(step.prev_sample), ref[f"{out}.prev_sample"][i], atol=1e-6
        )
        # torch's float32 ``var ** 0.5`` is 1 ulp off the correctly rounded sqrt at some t
        np.testing.assert_allclose(np.array(s.step_std[t]), ref[f"{out}.std"][i], rtol=2.5e-7)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_full_loop_matches_diffusers(ref, prediction_type):
    s = DDPMScheduler(**KWARGS, prediction_type=prediction_type)
    s.set_timesteps(100)
    noise = ref[f"input.{prediction_type}.variance_noise"]
    x = mx.array(ref["input.initial_sample"])
    for i, t in enumerate(np.array(s.timesteps).tolist()):
        x = s.step(_model(x, t), mx.array(t), x, variance_noise=mx.array(noise[i])).prev_sample
        np.testing.assert_allclose(
            np.array(x), ref[f"output.{prediction_type}.prev_sample"][i], atol=1e-5
        )


def test_timestep_forms_and_compile_agree(ref):
    s = DDPMScheduler(**KWARGS)
    x = mx.array(ref["output.epsilon.sample_in"][40])
    eps = mx.array(ref["output.epsilon.model_output"][40])
    noise = mx.array(ref["input.epsilon.variance_noise"][40])
    t = int(ref["input.epsilon.timesteps"][40])
    expected = ref["output.epsilon.prev_sample"][40]
    per_sample = mx.full((x.shape[0],), t, dtype=mx.int32)
    compiled = mx.compile(lambda e, tt, xx, n: s.step(e, tt, xx, variance_noise=n).prev_sample)
    for timestep in (t, np.int64(t), mx.array(t), per_sample):
        out = s.step(eps, timestep, x, variance_noise=noise).prev_sample
        np.testing.assert_allclose(np.array(out), expected, atol=1e-6)
    for timestep in (mx.array(t), mx.array(t - 1), mx.array(t)):  # one trace serves every t
        out = compiled(eps, timestep, x, noise)
    np.testing.assert_allclose(np.array(out), expected, atol=1e-6)
    # per-sample timesteps: row b uses its own t
    mixed = s.step(eps, mx.array([t, 0, t, 0]), x, variance_noise=noise).prev_sample
    at_zero = s.step(eps, 0, x, variance_noise=noise).prev_sample
    np.testing.assert_allclose(np.array(mixed)[0], expected[0], atol=1e-6)
    np.testing.assert_allclose(np.array(mixed)[1], np.array(at_zero)[1], atol=1e-6)


def test_noise_comes_from_the_key_and_is_skipped_at_t0():
    s = DDPMScheduler(**KWARGS)
    x = mx.zeros((2, 8, 2))
    key = mx.random.key(3)
    a = s.step(x, 50, x, key=key).prev_sample
    b = s.step(x, 50, x, key=key).prev_sample
    c = s.step(x, 50, x, key=mx.random.key(4)).prev_sample
    np.testing.assert_array_equal(np.array(a), np.array(b))
    assert not np.allclose(np.array(a), np.array(c))
    # x = eps = 0 leaves only std * noise: the draw is N(0, 1) from that key
    expected = float(s.step_std[50]) * np.array(mx.random.normal(x.shape, key=key))
    np.testing.assert_allclose(np.array(a), expected, rtol=1e-6)
    np.testing.assert_array_equal(np.array(s.step(x, 0, x, key=key).prev_sample), 0.0)
    mx.random.seed(7)
    g1 = s.step(x, 50, x).prev_sample
    mx.random.seed(7)
    g2 = s.step(x, 50, x).prev_sample
    np.testing.assert_array_equal(np.array(g1), np.array(g2))


def test_strided_timesteps_use_the_skipping_posterior():
    s = DDPMScheduler(**{**KWARGS, "prediction_type": "sample", "clip_sample": False})
    s.set_timesteps(10)
    np.testing.assert_array_equal(np.array(s.timesteps), np.arange(90, -1, -10))
    acp = np.array(s.alphas_cumprod, dtype=np.float64)
    x0, xt = np.full((1, 3), 0.5), np.full((1, 3), -0.25)
    out = s.step(
        mx.array(x0, mx.float32), 30, mx.array(xt, mx.float32), variance_noise=mx.ones((1, 3))
    )
    a_t, a_prev = acp[30], acp[20]
    beta = 1 - a_t / a_prev
    mean = (
        np.sqrt(a_prev) * beta / (1 - a_t) * x0 + np.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t) * xt
    )
    std = np.sqrt((1 - a_prev) / (1 - a_t) * beta)
    np.testing.assert_allclose(np.array(out.prev_sample), mean + std, rtol=1e-5)


def test_variance_types_and_v_prediction():
    small = DDPMScheduler(**{**KWARGS, "variance_type": "fixed_small"})
    log = DDPMScheduler(**{**KWARGS, "variance_type": "fixed_small_log"})
    large = DDPMScheduler(**{**KWARGS, "variance_type": "fixed_large"})
    np.testing.assert_allclose(np.array(log.step_std), np.array(small.step_std), rtol=1e-6)
    np.testing.assert_allclose(np.array(large.step_std)[1:], np.sqrt(np.array(large.betas))[1:])
    assert float(large.step_std[0]) == 0.0
    v = DDPMScheduler(**{**KWARGS, "prediction_type": "v_prediction", "clip_sample": False})
    x0 = mx.array([[0.3, -0.2]])
    eps = mx.array([[1.0, 0.5]])
    t = mx.array([60])
    xt = v.add_noise(x0, eps, t)
    velocity = v.get_velocity(x0, eps, t)
    out = v.step(velocity, 60, xt, variance_noise=mx.zeros((1, 2)))
    np.testing.assert_allclose(np.array(out.pred_original_sample), np.array(x0), atol=1e-6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="beta_schedule 'cosine'"):
        DDPMScheduler(beta_schedule="cosine")
    with pytest.raises(ValueError, match="variance_type 'learned'"):
        DDPMScheduler(variance_type="learned")
    with pytest.raises(ValueError, match="prediction_type 'x0'"):
        DDPMScheduler(prediction_type="x0")
    with pytest.raises(ValueError, match="num_inference_steps=200"):
        DDPMScheduler(num_train_timesteps=100).set_timesteps(200)
    with pytest.raises(ValueError, match="trained_betas has shape"):
        DDPMScheduler(num_train_timesteps=3, trained_betas=[0.1, 0.2])
    with pytest.raises(IndexError, match="timestep 100"):
        DDPMScheduler(num_train_timesteps=100).step(mx.zeros(2), 100, mx.zeros(2))
