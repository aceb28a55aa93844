"""rollout helpers shared by the runners (the rollouts themselves: the runner tests)."""

import numpy as np

from diffusion_policy_mlx.env_runner.rollout import past_action_input, plan_episodes


def test_past_action_input_keeps_the_last_to_minus_one_actions():
    history = np.arange(2 * 5 * 2, dtype=np.float64).reshape(2, 5, 2)
    out = past_action_input(history, n_obs_steps=3)
    assert out.dtype.size == 4 and out.shape == (2, 2, 2)
    np.testing.assert_array_equal(np.array(out), history[:, 3:])


def test_plan_episodes_orders_train_then_test_with_their_seeds():
    episodes = plan_episodes(2, 1, 0, 3, 2, 100000)
    assert [e.seed for e in episodes] == [0, 1, 100000, 100001, 100002]
    assert [e.record_video for e in episodes] == [True, False, True, True, False]
    assert [e.prefix for e in episodes] == ["train/"] * 2 + ["test/"] * 3
