"""DDIMScheduler against diffusers 0.11.1 recordings (ddim.safetensors)."""

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file

from diffusion_policy_mlx.schedulers import DDIMScheduler

KWARGS = dict(
    num_train_timesteps=100,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="squaredcos_cap_v2",
    clip_sample=True,
    set_alpha_to_one=True,
    steps_offset=0,
    prediction_type="epsilon",
)


@pytest.fixture(scope="module")
def ref(fixtures_dir: Path) -> dict[str, np.ndarray]:
    return load_file(fixtures_dir / "ddim.safetensors")


def _model(x: mx.array, t: int) -> mx.array:
    # the fixture's stand-in denoiser, in float32 like torch: 0.1*x + float32(0.01*t)
    return mx.array(0.1, mx.float32) * x + mx.array(0.01 * t, mx.float32)


@pytest.mark.parametrize("n", [10, 16])
def test_loop_matches_diffusers(ref, n):
    s = DDIMScheduler(**KWARGS)
    np.testing.assert_array_equal(np.array(s.alphas_cumprod), ref["output.alphas_cumprod"])
    s.set_timesteps(n)
    timesteps = np.array(s.timesteps)
    np.testing.assert_array_equal(timesteps, ref[f"input.steps{n}.timesteps"])
    out = f"output.steps{n}"
    x = mx.array(ref["input.initial_sample"])
    for i, t in enumerate(timesteps.tolist()):
        np.testing.assert_array_equal(
            np.array(s.alphas_cumprod_prev[t]), ref[f"{out}.alpha_prod_t_prev"][i]
        )
        # one step from the recorded input
        step = s.step(
            mx.array(ref[f"{out}.model_output"][i]), t, mx.array(ref[f"{out}.sample_in"][i])
        )
        x0_atol = 1e-6 / np.sqrt(ref["output.alphas_cumprod"][t])  # see test_ddpm
        np.testing.assert_allclose(
            np.array(step.pred_original_sample), ref[f"{out}.pred_original_sample"][i], atol=x0_atol
        )
        np.testing.assert_allclose(
            np.array(step.prev_sample), ref[f"{out}.prev_sample"][i], atol=1e-6
        )
        # the free-running loop
        x = s.step(_model(x, t), mx.array(t), x).prev_sample
        np.testing.assert_allclose(np.array(x), ref[f"{out}.prev_sample"][i], atol=1e-5)


def test_final_alpha_and_steps_offset():
    assert DDIMScheduler(**KWARGS).final_alpha_cumprod == 1.0
    s = DDIMScheduler(**{**KWARGS, "set_alpha_to_one": False, "steps_offset": 1})
    assert s.final_alpha_cumprod == np.array(s.alphas_cumprod)[0]
    s.set_timesteps(10)
    np.testing.assert_array_equal(np.array(s.timesteps), np.arange(91, 0, -10))
    # t=1 steps to 1-10 < 0, which uses alphas_cumprod[0] when set_alpha_to_one is False
    assert float(s.alphas_cumprod_prev[1]) == float(s.alphas_cumprod[0])
    with pytest.raises(ValueError, match="steps_offset=1 pushes timestep 100"):
        s.set_timesteps(100)


def test_eta_adds_scaled_noise_by_the_ddim_formula():
    s = DDIMScheduler(**{**KWARGS, "clip_sample": False})
    s.set_timesteps(10)
    acp = np.array(s.alphas_cumprod, dtype=np.float64)
    t, prev = 50, 40
    x = np.array([[0.2, -0.4]])
    eps = np.array([[0.5, 1.5]])
    noise = np.array([[1.0, -2.0]])
    out = s.step(
        mx.array(eps, mx.float32),
        mx.array(t),
        mx.array(x, mx.float32),
        variance_noise=mx.array(noise, mx.float32),
        eta=0.7,
    )
    x0 = (x - np.sqrt(1 - acp[t]) * eps) / np.sqrt(acp[t])
    var = (1 - acp[prev]) / (1 - acp[t]) * (1 - acp[t] / acp[prev])
    std = 0.7 * np.sqrt(var)
    expected = np.sqrt(acp[prev]) * x0 + np.sqrt(1 - acp[prev] - std**2) * eps + std * noise
    np.testing.assert_allclose(np.array(out.prev_sample), expected, rtol=1e-5)
    # the same key draws the same noise; eta = 0 ignores it
    key = mx.random.key(0)
    a = s.step(mx.array(eps, mx.float32), t, mx.array(x, mx.float32), key=key, eta=1.0)
    b = s.step(mx.array(eps, mx.float32), t, mx.array(x, mx.float32), key=key, eta=1.0)
    np.testing.assert_array_equal(np.array(a.prev_sample), np.array(b.prev_sample))


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_other_prediction_types_recover_x0_and_eps(prediction_type):
    s = DDIMScheduler(**{**KWARGS, "clip_sample": False, "prediction_type": prediction_type})
    s.set_timesteps(10)
    x0 = mx.array([[0.3, -0.6]])
    eps = mx.array([[-1.0, 0.8]])
    t = mx.array([70])
    xt = s.add_noise(x0, eps, t)
    output = x0 if prediction_type == "sample" else s.get_velocity(x0, eps, t)
    out = s.step(output, 70, xt)
    # deterministic DDIM of an exact prediction lands on the forward process at t - 10
    expected = s.add_noise(x0, eps, mx.array([60]))
    np.testing.assert_allclose(np.array(out.pred_original_sample), np.array(x0), atol=1e-5)
    np.testing.assert_allclose(np.array(out.prev_sample), np.array(expected), atol=1e-5)


def test_compiled_step_with_array_timesteps_matches_eager(ref):
    s = DDIMScheduler(**KWARGS)
    s.set_timesteps(10)
    x = mx.array(ref["output.steps10.sample_in"][3])
    eps = mx.array(ref["output.steps10.model_output"][3])
    compiled = mx.compile(lambda e, t, xx: s.step(e, t, xx).prev_sample)
    for t in (60, 50):
        eager = s.step(eps, t, x).prev_sample
        np.testing.assert_array_equal(np.array(compiled(eps, mx.array(t), x)), np.array(eager))
        batched = s.step(eps, mx.full((x.shape[0],), t), x).prev_sample
        np.testing.assert_allclose(np.array(batched), np.array(eager), atol=1e-7)
