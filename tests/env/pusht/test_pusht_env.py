"""PushTEnv against upstream: seeded resets, physics replays, rewards, contacts, rendering.

Oracles: ``tests/fixtures/upstream/env_pusht.*`` (upstream's env on pymunk 6.2.1, see
``tests/fixtures/README.md``) and the recorded dataset ``pusht_cchi_v7_replay.zarr``.
"""

from pathlib import Path

import numpy as np
import pytest
import zarr
from safetensors.numpy import load_file

from diffusion_policy_mlx.env.pusht import PushTEnv
from diffusion_policy_mlx.env.pusht.pusht_env import overlap_area


@pytest.fixture(scope="module")
def fx(fixtures_dir: Path) -> dict[str, np.ndarray]:
    return load_file(fixtures_dir / "env_pusht.safetensors")


def full_state(env: PushTEnv) -> np.ndarray:
    """Upstream fixture layout: agent xy, agent v, block xy, raw angle, block v, angular v."""
    a, b = env.agent, env.block
    return np.array(
        [*a.position, *a.velocity, *b.position, b.angle, *b.velocity, b.angular_velocity]
    )


def episode(z: zarr.Group, e: int) -> dict[str, np.ndarray]:
    ends = z["meta"]["episode_ends"][:]
    start = 0 if e == 0 else int(ends[e - 1])
    return {k: z["data"][k][start : int(ends[e])] for k in ("state", "action", "img", "n_contacts")}


@pytest.mark.parametrize("legacy", [True, False])
def test_reset_states_match_upstream(fx, legacy):
    name = "legacy" if legacy else "nonlegacy"
    env = PushTEnv(legacy=legacy)
    for i, seed in enumerate(fx["input.reset.seeds"]):
        env.seed(int(seed))
        obs, info = env.reset()
        np.testing.assert_allclose(
            full_state(env), fx[f"output.reset.{name}.full_state"][i], atol=1e-9
        )
        np.testing.assert_allclose(obs, fx[f"output.reset.{name}.obs"][i], atol=1e-9)
        assert set(info) == {"pos_agent", "vel_agent", "block_pose", "goal_pose", "n_contacts"}


def test_gymnasium_reset_seed_equals_upstream_seed_then_reset(fx):
    env = PushTEnv(legacy=True)
    obs, _ = env.reset(seed=100003)
    np.testing.assert_allclose(obs, fx["output.reset.legacy.obs"][3], atol=1e-9)
    # As upstream, a reset without a new seed starts from the same state again.
    again, _ = env.reset()
    np.testing.assert_array_equal(again, obs)
    assert env.observation_space.contains(obs)


def test_reset_to_state_option_places_the_body_origin(fx):
    state = np.array([100.0, 120.0, 300.0, 250.0, 1.0])
    env = PushTEnv(legacy=False)
    obs, _ = env.reset(options={"reset_to_state": state})
    np.testing.assert_allclose(obs, state, atol=1e-9)
    # Constructor state is the default; the option overrides it for that reset only.
    env = PushTEnv(legacy=False, reset_to_state=state + 1)
    np.testing.assert_allclose(env.reset()[0], state + 1, atol=1e-9)
    np.testing.assert_allclose(env.reset(options={"reset_to_state": state})[0], state, atol=1e-9)
    # legacy=True applies the angle about the centre of gravity after the position.
    obs, _ = PushTEnv(legacy=True).reset(options={"reset_to_state": state})
    assert np.abs(obs[2:4] - state[2:4]).max() > 1.0


@pytest.mark.parametrize("e", [0, 1, 2])
@pytest.mark.parametrize("variant", ["legacy0", "legacy1", "seedreset"])
def test_replay_matches_upstream_step_by_step(fx, e, variant):
    state0 = fx[f"input.replay.ep{e}.recorded_state"][0].astype(np.float64)
    actions = fx[f"input.replay.ep{e}.actions"].astype(np.float64)
    out = {
        k: fx[f"output.replay.ep{e}.{variant}.{k}"]
        for k in ("full_state", "obs", "reward", "done", "n_contacts")
    }
    if variant == "seedreset":
        env = PushTEnv(legacy=True)
        env.seed(e)
        obs, _ = env.reset()
    else:
        env = PushTEnv(legacy=variant == "legacy1", reset_to_state=state0)
        obs, _ = env.reset()
    np.testing.assert_allclose(obs, fx[f"output.replay.ep{e}.{variant}.reset_obs"], atol=1e-9)
    for t, action in enumerate(actions):
        obs, reward, terminated, truncated, info = env.step(action)
        np.testing.assert_allclose(full_state(env), out["full_state"][t], atol=1e-6)
        np.testing.assert_allclose(obs, out["obs"][t], atol=1e-6)
        assert reward == pytest.approx(out["reward"][t], abs=1e-12)
        assert terminated == bool(out["done"][t]) and truncated is False
        assert info["n_contacts"] == out["n_contacts"][t]


@pytest.mark.parametrize("e", [0, 1, 2])
def test_replay_reproduces_recorded_states(fx, e):
    """Non-legacy replay of the recorded actions lands on the recorded state of the next row."""
    recorded = fx[f"input.replay.ep{e}.recorded_state"].astype(np.float64)
    actions = fx[f"input.replay.ep{e}.actions"].astype(np.float64)
    env = PushTEnv(legacy=False, reset_to_state=recorded[0])
    env.reset()
    for t in range(len(actions) - 1):
        obs, *_ = env.step(actions[t])
        np.testing.assert_allclose(obs[:4], recorded[t + 1, :4], atol=0.01)
        wrapped = (obs[4] - recorded[t + 1, 4] + np.pi) % (2 * np.pi) - np.pi
        assert abs(wrapped) < 1e-4


def test_step_none_keeps_the_world_still():
    env = PushTEnv()
    obs0, _ = env.reset(seed=3)
    obs1, *_, info = env.step(None)
    np.testing.assert_array_equal(obs0, obs1)
    assert info["n_contacts"] == 0


def test_reward_is_clipped_coverage_over_095():
    env = PushTEnv(legacy=False)
    # Block exactly on the goal: full coverage, success.
    goal = env.reset(options={"reset_to_state": [50, 50, 256, 256, np.pi / 4]})[0]
    np.testing.assert_allclose(goal[2:], [256, 256, np.pi / 4], atol=1e-9)
    _, reward, terminated, _, _ = env.step(None)
    assert reward == pytest.approx(1.0) and terminated
    # Shifted 15 px along the crossbar (rotated by π/4): the crossbar loses 15 of its 120 px
    # length; the stem (30 wide) keeps 15 px of its width: coverage = (105*30 + 15*90) / 6300.
    shift = 15 * np.array([np.cos(np.pi / 4), np.sin(np.pi / 4)])
    env.reset(options={"reset_to_state": [50, 50, *(np.array([256, 256]) + shift), np.pi / 4]})
    _, reward, terminated, _, _ = env.step(None)
    coverage = (105 * 30 + 15 * 90) / 6300
    assert reward == pytest.approx(coverage / 0.95, abs=1e-9) and not terminated


def test_overlap_area_of_squares():
    a = [np.array([[0, 0], [2, 0], [2, 2], [0, 2]], dtype=float)]
    b = [np.array([[1, 1], [1, 3], [3, 3], [3, 1]], dtype=float)]  # other winding
    assert overlap_area(a, b) == pytest.approx(1.0)
    far = [b[0] + 10]
    assert overlap_area(a, far) == 0.0


def test_set_state_local_composes_with_goal_pose():
    env = PushTEnv(legacy=False)
    env.reset(seed=0)
    # Block at the goal's origin, agent 10 px along the goal's x axis.
    state = env._set_state_local(np.array([10.0, 0.0, 0.0, 0.0, 0.0]))
    c = np.cos(np.pi / 4)
    np.testing.assert_allclose(state, [256 + 10 * c, 256 + 10 * c, 256, 256, np.pi / 4], atol=1e-9)


def test_render_shape_marker_and_errors():
    env = PushTEnv(render_action=True, render_size=96)
    env.reset(seed=1)
    before = env.render()
    assert before.shape == (96, 96, 3) and before.dtype == np.uint8
    env.step(np.array([256.0, 256.0]))
    img = env.render()
    np.testing.assert_array_equal(img[48, 44:53], np.tile([255, 0, 0], (9, 1)))
    np.testing.assert_array_equal(img[44:53, 48], np.tile([255, 0, 0], (9, 1)))
    big = PushTEnv(render_size=128)
    big.reset(seed=1)
    assert big.render().shape == (128, 128, 3)
    with pytest.raises(ValueError, match="rgb_array"):
        env.render(mode="human")


def test_canvas_matches_upstream_pygame_canvas(fx):
    env = PushTEnv(legacy=True, render_action=False)
    env.seed(100000)
    env.reset()
    np.testing.assert_array_equal(
        env._draw_canvas(), fx["output.image_env.seed100000.canvas_512_uint8"]
    )


@pytest.mark.parametrize("e", [0, 1, 2])
def test_replayed_frames_match_recorded_images(pusht_zarr, e):
    """Every frame of the episode, contact marks included, equals the recorded ``img``."""
    data = episode(zarr.open(pusht_zarr, mode="r"), e)
    env = PushTEnv(
        legacy=False, render_action=False, reset_to_state=data["state"][0].astype(np.float64)
    )
    env.reset()
    for t, action in enumerate(data["action"].astype(np.float64)):
        np.testing.assert_array_equal(
            env.render(), data["img"][t].astype(np.uint8), err_msg=f"frame {t}"
        )
        env.step(action)


@pytest.mark.slow
def test_all_recorded_episodes_replay_and_render(pusht_zarr):
    """All 206 episodes: replay within 1 px of the recorded states; every 4th replayed frame
    renders like the recorded image (mean absolute difference below 1/255)."""
    z = zarr.open(pusht_zarr, mode="r")
    n_episodes = z["meta"]["episode_ends"].shape[0]
    worst_pos, worst_mad, n_frames, n_exact = 0.0, 0.0, 0, 0
    for e in range(n_episodes):
        data = episode(z, e)
        state = data["state"].astype(np.float64)
        env = PushTEnv(legacy=False, render_action=False, reset_to_state=state[0])
        env.reset()
        for t, action in enumerate(data["action"].astype(np.float64)):
            if t % 4 == 0:
                diff = np.abs(env.render().astype(np.float64) - data["img"][t])
                worst_mad = max(worst_mad, diff.mean() / 255)
                n_frames += 1
                n_exact += diff.max() == 0
            obs, *_ = env.step(action)
            if t + 1 < len(state):
                worst_pos = max(worst_pos, np.abs(obs[:4] - state[t + 1, :4]).max())
    assert worst_pos < 1.0
    assert worst_mad < 1 / 255
    assert n_exact / n_frames > 0.99
