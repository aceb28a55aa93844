"""PushTImageRunner with a random policy on 2 train + 2 test seeds, checked against a replay.

Every number in the log is re-derived by replaying the policy's recorded actions on a fresh,
single PushTImageEnv with the episode's seed; the videos are decoded and compared with that
replay's frames.
"""

import mlx.core as mx
import numpy as np
import pytest
from rollout_helpers import RandomImagePolicy, decode_video

from diffusion_policy_mlx.env.pusht.pusht_image_env import PushTImageEnv
from diffusion_policy_mlx.env_runner.pusht_image_runner import PushTImageRunner

N_OBS, N_ACT, MAX_STEPS = 2, 8, 16
# n_envs=3 over 4 episodes: batch 0 = train 0, train 1, test 10000; batch 1 = test 10001 + 2 pads
BATCHES = [[("train/", 0), ("train/", 1), ("test/", 10000)], [("test/", 10001)]]


def replay(seed: int, actions: np.ndarray) -> tuple[list[dict], list[float], list[np.ndarray]]:
    """Observations (reset first), rewards and rendered frames of one episode."""
    env = PushTImageEnv(legacy=True, render_size=96)
    obs, _ = env.reset(seed=seed)
    all_obs, rewards, frames = [obs], [], []
    for action in actions:
        obs, reward, terminated, _, _ = env.step(action)
        all_obs.append(obs)
        rewards.append(reward)
        frames.append(env.render())
        if terminated:
            break
    return all_obs, rewards, frames


def assert_video_shows(decoded: np.ndarray, frames: list[np.ndarray]) -> None:
    """Each decoded frame is (lossily) the replay's frame of the same step, and no other."""
    errors = np.abs(decoded[:, None].astype(np.float32) - np.stack(frames)[None]).mean(
        axis=(2, 3, 4)
    )
    assert errors.diagonal().max() < 2.0, errors.diagonal()
    np.testing.assert_array_equal(errors.argmin(axis=1), np.arange(len(frames)))


@pytest.mark.parametrize("vector_env", ["sync", "async"])
def test_random_policy_rollout(tmp_path, vector_env):
    runner = PushTImageRunner(
        output_dir=tmp_path,
        n_train=2,
        n_train_vis=1,
        train_start_seed=0,
        n_test=2,
        n_test_vis=1,
        legacy_test=True,
        test_start_seed=10000,
        max_steps=MAX_STEPS,
        n_obs_steps=N_OBS,
        n_action_steps=N_ACT,
        fps=10,
        crf=22,
        render_size=96,
        n_envs=3,
        tqdm_interval_sec=0.0,
        vector_env=vector_env,
    )
    policy = RandomImagePolicy(n_action_steps=N_ACT, seed=0)
    log = runner.run(policy)
    runner.close()

    assert set(log) == {
        "train/sim_max_reward_0",
        "train/sim_max_reward_1",
        "test/sim_max_reward_10000",
        "test/sim_max_reward_10001",
        "train/sim_video_0",
        "test/sim_video_10000",
        "train/mean_score",
        "test/mean_score",
    }
    assert policy.n_resets == 2
    calls_per_batch = MAX_STEPS // N_ACT
    assert len(policy.calls) == 2 * calls_per_batch

    max_rewards = {}
    for batch_idx, batch in enumerate(BATCHES):
        calls = policy.calls[batch_idx * calls_per_batch : (batch_idx + 1) * calls_per_batch]
        for row, (prefix, seed) in enumerate(batch):
            actions = np.concatenate([action[row] for _, action in calls])
            all_obs, rewards, frames = replay(seed, actions)
            assert len(rewards) == MAX_STEPS  # random actions do not finish the task

            # what the policy saw: the reset obs twice, then the obs after steps 7 and 8
            first_obs, second_obs = calls[0][0], calls[1][0]
            assert first_obs["image"].shape == (3, N_OBS, 3, 96, 96)
            assert first_obs["image"].dtype == np.float32
            for t in range(N_OBS):
                np.testing.assert_array_equal(first_obs["image"][row, t], all_obs[0]["image"])
                np.testing.assert_allclose(
                    first_obs["agent_pos"][row, t], all_obs[0]["agent_pos"], rtol=1e-6
                )
            np.testing.assert_array_equal(second_obs["image"][row, 0], all_obs[7]["image"])
            np.testing.assert_array_equal(second_obs["image"][row, 1], all_obs[8]["image"])
            assert "past_action" not in second_obs

            max_rewards[prefix, seed] = max(rewards)
            assert log[f"{prefix}sim_max_reward_{seed}"] == pytest.approx(max(rewards), abs=1e-12)

            video_key = f"{prefix}sim_video_{seed}"
            if seed in (0, 10000):
                path = log[video_key]
                assert path.startswith(str(tmp_path / "media")) and path.endswith(".mp4")
                meta, decoded = decode_video(path)
                assert meta["codec"] == "h264" and meta["fps"] == 10
                assert decoded.shape == (MAX_STEPS, 96, 96, 3)
                assert_video_shows(decoded, frames)
            else:
                assert video_key not in log

    for prefix in ("train/", "test/"):
        expected = np.mean([v for (p, _), v in max_rewards.items() if p == prefix])
        assert log[f"{prefix}mean_score"] == pytest.approx(expected, abs=1e-12)
    # only the two recorded episodes left files
    assert len(list((tmp_path / "media").iterdir())) == 2


def test_past_action_is_passed(tmp_path):
    runner = PushTImageRunner(
        output_dir=tmp_path,
        n_train=1,
        n_train_vis=0,
        n_test=0,
        n_test_vis=0,
        max_steps=8,
        n_obs_steps=3,
        n_action_steps=4,
        past_action=True,
        tqdm_interval_sec=0.0,
    )
    policy = RandomImagePolicy(n_action_steps=4, seed=1)
    log = runner.run(policy)
    assert set(log) == {"train/sim_max_reward_0", "train/mean_score"}
    (first, action0), (second, _) = policy.calls
    assert "past_action" not in first
    np.testing.assert_array_equal(second["past_action"], action0[:, -2:])
    assert not (tmp_path / "media").exists()


def test_no_episodes_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="n_train and n_test"):
        PushTImageRunner(output_dir=tmp_path, n_train=0, n_test=0)


def test_wrong_action_shape_is_an_error(tmp_path):
    class ThreeDimPolicy(RandomImagePolicy):
        def predict_action(self, obs_dict):
            result = super().predict_action(obs_dict)
            return {"action": mx.concatenate([result["action"]] * 2, axis=-1)[..., :3]}

    runner = PushTImageRunner(
        output_dir=tmp_path, n_train=2, n_train_vis=0, n_test=0, n_test_vis=0, max_steps=8
    )
    with pytest.raises(ValueError, match=r"\(n_envs=2, n_action_steps, 2\)"):
        runner.run(ThreeDimPolicy(n_action_steps=8))
