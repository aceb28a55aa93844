"""Vector envs: per-env seeds and video paths, no autoreset, finished envs stepped as no-ops."""

import numpy as np
import pytest
from counter_env import CounterEnv
from test_video_recording_wrapper import decode

from diffusion_policy_mlx.gym_util.multistep_wrapper import MultiStepWrapper
from diffusion_policy_mlx.gym_util.vector_env import SyncVectorEnv, make_vector_env
from diffusion_policy_mlx.gym_util.video_recording_wrapper import (
    VideoRecorder,
    VideoRecordingWrapper,
)


def make_env() -> MultiStepWrapper:
    return MultiStepWrapper(
        VideoRecordingWrapper(CounterEnv(goal=5), VideoRecorder.create_h264(fps=10)),
        n_obs_steps=2,
        n_action_steps=2,
        max_episode_steps=6,
    )


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_rollout_until_all_done(kind, tmp_path):
    env = make_vector_env([make_env, make_env], kind=kind)
    assert isinstance(env, SyncVectorEnv) == (kind == "sync")
    path = tmp_path / "env0.mp4"
    env.set_attr("file_path", [str(path), None])
    obs, _ = env.reset(seed=[3, 0])
    np.testing.assert_array_equal(obs[:, -1, 1], [3, 0])

    # env 0 terminates on its first chunk (3 -> 4 -> 5); env 1 (0 -> 0.5 -> ... -> 3) is
    # truncated after 6 steps
    actions = np.array([[[1.0], [1.0]], [[0.5], [0.5]]], dtype=np.float32)
    n_chunks = 0
    done = np.zeros(2, dtype=bool)
    while not done.all():
        obs, reward, terminated, truncated, _ = env.step(actions)
        done = terminated | truncated
        n_chunks += 1
        if n_chunks == 1:
            assert terminated.tolist() == [True, False]
    assert n_chunks == 3
    np.testing.assert_array_equal(terminated, [True, False])
    np.testing.assert_array_equal(truncated, [False, True])
    # env 0 was stepped twice more without moving: its last observation is still position 5
    np.testing.assert_array_equal(obs[:, -1], [[2, 5], [6, 3]])
    np.testing.assert_array_equal(reward, [5, 3])

    rewards = env.get_attr("reward")
    assert [list(r) for r in rewards] == [[4, 5], [0.5, 1, 1.5, 2, 2.5, 3]]
    assert env.call("stop_recording") == (str(path), None)
    _, frames = decode(path)
    assert len(frames) == 2

    # a second batch of episodes with other seeds and no video
    env.set_attr("file_path", [None, None])
    obs, _ = env.reset(seed=[1, 2])
    np.testing.assert_array_equal(obs[:, -1, 1], [1, 2])
    env.close()


def test_unknown_kind():
    with pytest.raises(ValueError, match="threads"):
        make_vector_env([make_env], kind="threads")
