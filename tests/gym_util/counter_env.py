"""A tiny deterministic gymnasium env whose every number can be derived by hand.

State: step count ``t`` and a 1-D ``position``. ``reset(seed=s)`` puts the position at ``s``
(0 without a seed); ``step([a])`` adds ``a`` to it; the reward is the new position; the episode
terminates once the position reaches ``goal``. Frames are flat grey at level ``40 * t``.
"""

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

FRAME_SIZE = (16, 24)  # (H, W)


class CounterEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, goal: float = 5.0, dict_obs: bool = False):
        self.goal = goal
        self.dict_obs = dict_obs
        self.render_mode = "rgb_array"
        self.action_space = spaces.Box(-10, 10, shape=(1,), dtype=np.float32)
        if dict_obs:
            self.observation_space = spaces.Dict(
                {
                    "t": spaces.Box(0, np.inf, shape=(1,), dtype=np.float32),
                    "pos": spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32),
                }
            )
        else:
            self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.t = 0
        self.position = 0.0
        self.n_env_steps = 0  # total across episodes, to see which calls reached the env

    def _obs(self) -> Any:
        if self.dict_obs:
            return {
                "t": np.array([self.t], dtype=np.float32),
                "pos": np.array([self.position], dtype=np.float32),
            }
        return np.array([self.t, self.position], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        self.position = float(seed or 0)
        return self._obs(), {"t": self.t}

    def step(self, action):
        self.t += 1
        self.n_env_steps += 1
        self.position += float(action[0])
        terminated = self.position >= self.goal
        return self._obs(), self.position, terminated, False, {"t": self.t}

    def render(self) -> np.ndarray:
        return np.full((*FRAME_SIZE, 3), min(40 * self.t, 255), dtype=np.uint8)
