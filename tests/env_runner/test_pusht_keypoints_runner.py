"""PushTKeypointsRunner with a random policy on 2 train + 2 test seeds, checked against a replay.

Uses latency (``n_latency_steps=1``), ``past_action`` and hidden keypoints
(``keypoint_visible_rate=0.7``) so that every part of the observation/action plumbing shows up
in the numbers; each episode is replayed on a fresh single PushTKeypointsEnv.
"""

import numpy as np
import pytest
from rollout_helpers import RandomLowdimPolicy, decode_video

from diffusion_policy_mlx.env.pusht.pusht_keypoints_env import PushTKeypointsEnv
from diffusion_policy_mlx.env_runner.pusht_keypoints_runner import PushTKeypointsRunner

N_OBS, N_ACT, N_LAT, MAX_STEPS, DO = 2, 8, 1, 16, 20
VISIBLE_RATE = 0.7
# n_envs=3 over 4 episodes: batch 0 = train 0, train 1, test 5; batch 1 = test 6 + 2 pads
BATCHES = [[("train/", 0), ("train/", 1), ("test/", 5)], [("test/", 6)]]


def replay(seed: int, actions: np.ndarray) -> tuple[list[np.ndarray], list[float], list]:
    """Observations (reset first), rewards and rendered frames of one episode."""
    env = PushTKeypointsEnv(legacy=False, keypoint_visible_rate=VISIBLE_RATE)
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


def test_random_policy_rollout(tmp_path):
    runner = PushTKeypointsRunner(
        output_dir=tmp_path,
        keypoint_visible_rate=VISIBLE_RATE,
        n_train=2,
        n_train_vis=1,
        train_start_seed=0,
        n_test=2,
        n_test_vis=1,
        legacy_test=False,
        test_start_seed=5,
        max_steps=MAX_STEPS,
        n_obs_steps=N_OBS,
        n_action_steps=N_ACT,
        n_latency_steps=N_LAT,
        fps=10,
        past_action=True,
        n_envs=3,
        tqdm_interval_sec=0.0,
    )
    # the policy predicts the latency step too; the runner drops it
    policy = RandomLowdimPolicy(n_action_steps=N_ACT + N_LAT, seed=0)
    log = runner.run(policy)
    runner.close()

    assert set(log) == {
        "train/sim_max_reward_0",
        "train/sim_max_reward_1",
        "test/sim_max_reward_5",
        "test/sim_max_reward_6",
        "train/sim_video_0",
        "test/sim_video_5",
        "train/mean_score",
        "test/mean_score",
    }
    assert policy.n_resets == 2
    calls_per_batch = MAX_STEPS // N_ACT
    assert len(policy.calls) == 2 * calls_per_batch

    max_rewards = {}
    for batch_idx, batch in enumerate(BATCHES):
        calls = policy.calls[batch_idx * calls_per_batch : (batch_idx + 1) * calls_per_batch]
        (first_obs, first_action), (second_obs, _) = calls
        assert first_obs["obs"].shape == (3, N_OBS, DO) and first_obs["obs"].dtype == np.float32
        assert first_obs["obs_mask"].dtype == np.bool_
        assert "past_action" not in first_obs
        # past_action: the last To - 1 actions executed, i.e. after the latency step was dropped
        np.testing.assert_array_equal(second_obs["past_action"], first_action[:, -1:])
        for row, (prefix, seed) in enumerate(batch):
            executed = np.concatenate([action[row, N_LAT:] for _, action in calls])
            all_obs, rewards, frames = replay(seed, executed)
            assert len(rewards) == MAX_STEPS

            # first call: the reset obs; second (after 8 steps, env keeps 3): steps 6 and 7
            for call_obs, steps in [(first_obs, [0, 0]), (second_obs, [6, 7])]:
                for t, step in enumerate(steps):
                    np.testing.assert_allclose(
                        call_obs["obs"][row, t], all_obs[step][:DO], rtol=1e-6
                    )
                    np.testing.assert_array_equal(
                        call_obs["obs_mask"][row, t], all_obs[step][DO:] > 0.5
                    )
            max_rewards[prefix, seed] = max(rewards)
            assert log[f"{prefix}sim_max_reward_{seed}"] == pytest.approx(max(rewards), abs=1e-12)

            video_key = f"{prefix}sim_video_{seed}"
            if seed in (0, 5):
                _, decoded = decode_video(log[video_key])
                assert decoded.shape == (MAX_STEPS, 96, 96, 3)
                errors = np.abs(decoded[:, None].astype(np.float32) - np.stack(frames)[None])
                errors = errors.mean(axis=(2, 3, 4))
                assert errors.diagonal().max() < 2.0
                np.testing.assert_array_equal(errors.argmin(axis=1), np.arange(MAX_STEPS))
            else:
                assert video_key not in log

    # hidden keypoints did reach the policy
    all_masks = np.concatenate([obs["obs_mask"] for obs, _ in policy.calls])
    assert 0.5 < all_masks[..., :18].mean() < 0.9
    assert all_masks[..., 18:].all()  # the agent position is always visible

    for prefix in ("train/", "test/"):
        expected = np.mean([v for (p, _), v in max_rewards.items() if p == prefix])
        assert log[f"{prefix}mean_score"] == pytest.approx(expected, abs=1e-12)


def test_policy_without_the_latency_actions_is_an_error(tmp_path):
    runner = PushTKeypointsRunner(
        output_dir=tmp_path,
        n_train=1,
        n_train_vis=0,
        n_test=0,
        n_test_vis=0,
        max_steps=8,
        n_obs_steps=2,
        n_action_steps=1,
        n_latency_steps=1,
        tqdm_interval_sec=0.0,
    )
    with pytest.raises(ValueError, match="n_action_steps \\+ n_latency_steps"):
        runner.run(RandomLowdimPolicy(n_action_steps=1, seed=0))
