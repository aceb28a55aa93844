"""PushTImageEnv: image observations equal to upstream's, at reset and along recorded episodes."""

from pathlib import Path

import numpy as np
import pytest
import zarr
from safetensors.numpy import load_file

from diffusion_policy_mlx.env.pusht import PushTImageEnv


@pytest.fixture(scope="module")
def fx(fixtures_dir: Path) -> dict[str, np.ndarray]:
    return load_file(fixtures_dir / "env_pusht.safetensors")


def test_reset_observations_match_upstream(fx):
    env = PushTImageEnv(legacy=True)
    for i, seed in enumerate(fx["input.image_env.seeds"]):
        obs, _ = env.reset(seed=int(seed))
        assert obs["image"].dtype == np.float32 and obs["image"].shape == (3, 96, 96)
        # stored as uint8 k: upstream's float32 image is exactly k / 255
        expected = fx["output.image_env.reset_obs.image_uint8"][i] / np.float32(255)
        np.testing.assert_array_equal(obs["image"], expected)
        np.testing.assert_allclose(
            obs["agent_pos"], fx["output.image_env.reset_obs.agent_pos"][i], atol=1e-9
        )
        assert env.observation_space["image"].contains(obs["image"])


def test_render_is_the_observation_plus_action_marker():
    env = PushTImageEnv()
    obs, _ = env.reset(seed=7)
    frame = env.render()
    np.testing.assert_array_equal(np.moveaxis(frame, -1, 0).astype(np.float32) / 255, obs["image"])
    obs, *_ = env.step(np.array([128.0, 384.0]))
    frame = env.render()
    # Marker at (128, 384) / 512 * 96 = (24, 72), not in the observation.
    np.testing.assert_array_equal(frame[72, 20:29], np.tile([255, 0, 0], (9, 1)))
    assert not (obs["image"][:, 72, 20:29] == np.array([[1.0], [0.0], [0.0]])).all()
    with pytest.raises(ValueError, match="rgb_array"):
        env.render(mode="human")


def test_recorded_episode_images(pusht_zarr):
    """Episode 3 replayed from its first state: every observation equals ``img / 255``."""
    z = zarr.open(pusht_zarr, mode="r")
    ends = z["meta"]["episode_ends"][:]
    sl = slice(int(ends[2]), int(ends[3]))
    state, action, img = (z["data"][k][sl] for k in ("state", "action", "img"))
    env = PushTImageEnv(legacy=False)
    obs, _ = env.reset(options={"reset_to_state": state[0].astype(np.float64)})
    for t in range(len(action)):
        np.testing.assert_array_equal(
            obs["image"], np.moveaxis(img[t], -1, 0) / 255, err_msg=f"t={t}"
        )
        obs, *_ = env.step(action[t].astype(np.float64))
