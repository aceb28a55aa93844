"""MultiStepWrapper on CounterEnv: every observation, reward and flag derived by hand."""

import numpy as np
import pytest
from counter_env import CounterEnv

from diffusion_policy_mlx.gym_util.multistep_wrapper import (
    MultiStepWrapper,
    aggregate,
    stack_last_n_obs,
)


def test_stack_last_n_obs_pads_with_oldest():
    obs = [np.array([1.0, 2.0]), np.array([3.0, 4.0])]
    np.testing.assert_array_equal(stack_last_n_obs(obs, 4), [[1, 2], [1, 2], [1, 2], [3, 4]])
    np.testing.assert_array_equal(stack_last_n_obs(obs, 1), [[3, 4]])
    with pytest.raises(ValueError, match="reset"):
        stack_last_n_obs([], 2)


def test_aggregate_methods():
    rewards = [1.0, 3.0, 2.0]
    assert aggregate(rewards, "max") == 3.0
    assert aggregate(rewards, "min") == 1.0
    assert aggregate(rewards, "mean") == 2.0
    assert aggregate(rewards, "sum") == 6.0
    with pytest.raises(ValueError, match="median"):
        aggregate(rewards, "median")


def test_spaces_are_repeated():
    env = MultiStepWrapper(CounterEnv(), n_obs_steps=3, n_action_steps=2)
    assert env.observation_space.shape == (3, 2)
    assert env.action_space.shape == (2, 1)
    np.testing.assert_array_equal(env.action_space.low, np.full((2, 1), -10))
    dict_env = MultiStepWrapper(CounterEnv(dict_obs=True), n_obs_steps=3, n_action_steps=2)
    assert dict_env.observation_space["pos"].shape == (3, 1)


def test_steps_truncation_and_episode_max_reward():
    env = MultiStepWrapper(
        CounterEnv(goal=100), n_obs_steps=3, n_action_steps=2, max_episode_steps=5
    )
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, np.zeros((3, 2)))

    # positions 1, 3; rewards are positions
    obs, reward, terminated, truncated, info = env.step(np.array([[1.0], [2.0]]))
    np.testing.assert_array_equal(obs, [[0, 0], [1, 1], [2, 3]])
    assert (reward, terminated, truncated) == (3.0, False, False)
    np.testing.assert_array_equal(info["t"], [1, 2])

    # positions 2, 1: the reward stays the episode's max so far, 3
    obs, reward, terminated, truncated, info = env.step(np.array([[-1.0], [-1.0]]))
    np.testing.assert_array_equal(obs, [[2, 3], [3, 2], [4, 1]])
    assert (reward, terminated, truncated) == (3.0, False, False)
    np.testing.assert_array_equal(info["t"], [2, 3, 4])

    # step 5 hits max_episode_steps: truncated, the chunk's second action is not executed
    obs, reward, terminated, truncated, info = env.step(np.array([[1.0], [1.0]]))
    np.testing.assert_array_equal(obs, [[3, 2], [4, 1], [5, 2]])
    assert (reward, terminated, truncated) == (3.0, False, True)
    np.testing.assert_array_equal(info["t"], [3, 4, 5])
    assert env.get_rewards() == [1.0, 3.0, 2.0, 1.0, 2.0]
    assert env.unwrapped.n_env_steps == 5

    # a finished episode ignores further actions
    obs2, reward2, _, truncated2, _ = env.step(np.array([[4.0], [4.0]]))
    np.testing.assert_array_equal(obs2, obs)
    assert (reward2, truncated2) == (3.0, True)
    assert env.unwrapped.n_env_steps == 5

    # reset clears the episode; the seed reaches the inner env
    obs, _ = env.reset(seed=7)
    np.testing.assert_array_equal(obs, [[0, 7]] * 3)
    assert env.get_rewards() == [] and env.get_infos() == {}


def test_termination_stops_the_chunk():
    env = MultiStepWrapper(CounterEnv(goal=5), n_obs_steps=2, n_action_steps=3)
    env.reset()
    obs, reward, terminated, truncated, _ = env.step(np.array([[3.0], [3.0], [3.0]]))
    np.testing.assert_array_equal(obs, [[1, 3], [2, 6]])
    assert (reward, terminated, truncated) == (6.0, True, False)
    assert env.unwrapped.n_env_steps == 2


def test_reward_agg_mean_and_dict_obs():
    env = MultiStepWrapper(
        CounterEnv(goal=100, dict_obs=True),
        n_obs_steps=2,
        n_action_steps=3,
        reward_agg_method="mean",
    )
    obs, _ = env.reset(seed=1)
    np.testing.assert_array_equal(obs["pos"], [[1], [1]])
    obs, reward, *_ = env.step(np.array([[1.0], [1.0], [4.0]]))  # positions 2, 3, 7
    np.testing.assert_array_equal(obs["pos"], [[3], [7]])
    np.testing.assert_array_equal(obs["t"], [[2], [3]])
    assert reward == pytest.approx(4.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="reward_agg_method"):
        MultiStepWrapper(CounterEnv(), n_obs_steps=2, n_action_steps=2, reward_agg_method="avg")
    env = MultiStepWrapper(CounterEnv(), n_obs_steps=2, n_action_steps=2)
    env.reset()
    with pytest.raises(ValueError, match="empty action"):
        env.step(np.zeros((0, 1)))
