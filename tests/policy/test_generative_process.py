"""The generative-process interface: a process written only against it (flow matching, as
docs/ARCHITECTURE.md shows) trains and samples a policy through the shared loop, compiled."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from diffusion_policy_mlx.model.common.normalizer import LinearNormalizer
from diffusion_policy_mlx.model.diffusion.conditional_unet1d import ConditionalUnet1D
from diffusion_policy_mlx.policy.diffusion_unet_lowdim_policy import DiffusionUnetLowdimPolicy
from diffusion_policy_mlx.schedulers import DDIMScheduler, DDPMScheduler, GenerativeProcess
from diffusion_policy_mlx.schedulers.scheduling_utils import SchedulerOutput


class FlowMatching:
    """Rectified flow over t in [0, 1], scaled to the U-Net's 0..1000 timestep range."""

    default_inference_steps = 4

    def sample_train_times(self, shape, key=None):
        return mx.random.uniform(shape=shape, key=key) * 1000

    def make_train_input(self, x0, noise, t):
        s = (t / 1000).reshape(-1, 1, 1)
        return (1 - s) * x0 + s * noise

    def target(self, x0, noise, t):
        return noise - x0

    def sampling_timesteps(self, num_inference_steps):
        self.dt = 1.0 / num_inference_steps
        return list(np.linspace(1.0, self.dt, num_inference_steps) * 1000)

    def step(self, model_output, timestep, sample, variance_noise=None, **kwargs):
        return SchedulerOutput(sample - self.dt * model_output, sample)


def _policy(process: GenerativeProcess) -> DiffusionUnetLowdimPolicy:
    mx.random.seed(0)
    policy = DiffusionUnetLowdimPolicy(
        ConditionalUnet1D(2, global_cond_dim=8, down_dims=[8, 16], n_groups=4),
        process,
        horizon=8,
        obs_dim=4,
        action_dim=2,
        n_action_steps=4,
        n_obs_steps=2,
        obs_as_global_cond=True,
    )
    normalizer = LinearNormalizer()
    rng = np.random.default_rng(0)
    normalizer.fit({"obs": rng.normal(size=(50, 4)), "action": rng.normal(size=(50, 2))})
    policy.set_normalizer(normalizer)
    return policy


def test_a_process_written_against_the_interface_trains_and_samples():
    policy = _policy(FlowMatching())
    assert policy.num_inference_steps == 4  # the process's default
    rng = np.random.default_rng(1)
    batch = {
        "obs": mx.array(rng.normal(size=(3, 8, 4)), mx.float32),
        "action": mx.array(rng.normal(size=(3, 8, 2)), mx.float32),
    }
    # the loss regresses the velocity: with a known noise and time it is the hand-made MSE
    noise = mx.array(rng.normal(size=(3, 8, 2)), mx.float32)
    t = mx.array([100.0, 500.0, 900.0])
    loss = policy.compute_loss(batch, noise=noise, timesteps=t)
    action = policy.normalizer["action"].normalize(batch["action"])
    s = (t / 1000).reshape(-1, 1, 1)
    cond = policy.normalizer["obs"].normalize(batch["obs"])[:, :2].reshape(3, -1)
    pred = policy.model((1 - s) * action + s * noise, t, global_cond=cond)
    want = mx.mean(mx.square(pred - (noise - action)))
    np.testing.assert_allclose(loss.item(), want.item(), rtol=1e-5)
    loss_and_grad = nn.value_and_grad(policy, policy.compute_loss)
    _, grads = loss_and_grad(batch)
    assert all(np.isfinite(np.array(g)).all() for _, g in nn.utils.tree_flatten(grads))

    policy.eval()
    obs = {"obs": batch["obs"][:, :2]}
    compiled = policy.predict_action(obs, key=mx.random.key(2))["action"]
    policy.compile_sampling = False
    eager = policy.predict_action(obs, key=mx.random.key(2))["action"]
    assert compiled.shape == (3, 4, 2)
    np.testing.assert_allclose(np.array(compiled), np.array(eager), atol=1e-5)


def test_ddpm_and_ddim_implement_the_interface():
    for process in (DDPMScheduler(num_train_timesteps=10), DDIMScheduler(num_train_timesteps=10)):
        assert isinstance(process.default_inference_steps, int)
        assert process.sampling_timesteps(5) == [8, 6, 4, 2, 0]
        t = process.sample_train_times((4,), key=mx.random.key(0))
        assert t.dtype == mx.int32 and int(t.max()) < 10
        x0, noise = mx.ones((4, 2, 1)), mx.zeros((4, 2, 1))
        np.testing.assert_array_equal(
            np.array(process.make_train_input(x0, noise, t)),
            np.array(process.add_noise(x0, noise, t)),
        )
        np.testing.assert_array_equal(np.array(process.target(x0, noise, t)), np.array(noise))
