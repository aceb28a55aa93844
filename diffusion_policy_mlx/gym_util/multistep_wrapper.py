"""Execute an action chunk per step and observe a short history (upstream's MultiStepWrapper).

A diffusion policy predicts ``n_action_steps`` actions from the last ``n_obs_steps``
observations. :class:`MultiStepWrapper` turns a one-action-per-step gymnasium env into one whose
``step`` takes ``(n_action_steps, *action_shape)`` and whose observations are
``(n_obs_steps, *obs_shape)`` (every key of a ``Dict`` space likewise).
"""

from collections import defaultdict, deque
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

REWARD_AGG_METHODS = ("max", "min", "mean", "sum")


def repeated_space(space: spaces.Space, n: int) -> spaces.Space:
    """``space`` with a new leading axis of length ``n`` (``Box`` or ``Dict`` of ``Box``)."""
    if isinstance(space, spaces.Box):
        return spaces.Box(
            low=np.repeat(space.low[None], n, axis=0),
            high=np.repeat(space.high[None], n, axis=0),
            dtype=space.dtype,
        )
    if isinstance(space, spaces.Dict):
        return spaces.Dict({key: repeated_space(value, n) for key, value in space.items()})
    raise TypeError(
        f"MultiStepWrapper supports Box and Dict spaces, got {type(space).__name__}; "
        "wrap an env whose observation and action spaces are Box or Dict of Box"
    )


def stack_last_n_obs(all_obs: Sequence[np.ndarray], n_steps: int) -> np.ndarray:
    """The last ``n_steps`` observations as ``(n_steps, *obs_shape)``.

    While fewer than ``n_steps`` exist (right after reset) the oldest one fills the front, so the
    policy sees a motionless history rather than zeros.
    """
    if len(all_obs) == 0:
        raise ValueError("stack_last_n_obs needs at least one observation; call reset() first")
    last = np.asarray(all_obs[-1])
    result = np.empty((n_steps, *last.shape), dtype=last.dtype)
    n_have = min(n_steps, len(all_obs))
    result[n_steps - n_have :] = np.stack([np.asarray(o) for o in list(all_obs)[-n_have:]])
    result[: n_steps - n_have] = result[n_steps - n_have]
    return result


def aggregate(data: Sequence[float], method: str = "max") -> float:
    """Reduce a list of rewards: ``max`` (any success), ``min`` (all), ``mean`` or ``sum``."""
    match method:
        case "max":
            return float(np.max(data))
        case "min":
            return float(np.min(data))
        case "mean":
            return float(np.mean(data))
        case "sum":
            return float(np.sum(data))
    raise ValueError(f"reward_agg_method={method!r} is not one of {REWARD_AGG_METHODS}")


class MultiStepWrapper(gym.Wrapper):
    """Runs ``n_action_steps`` actions per ``step`` and returns the last ``n_obs_steps`` observations.

    Semantics follow upstream:

    * ``step(action)`` with ``action`` of shape ``(Ta, *action_shape)`` steps the inner env once per
      row, stopping early once the episode has ended; stepping a finished episode is a no-op that
      returns the same observation, so vectorized rollouts can keep stepping envs that are done.
    * The episode is truncated after ``max_episode_steps`` inner steps (if given).
    * The returned reward aggregates *all* rewards of the episode so far with
      ``reward_agg_method`` (``max``: the best coverage reached); ``self.reward`` keeps the list.
    * ``info`` maps each inner info key to an array of its last ``n_obs_steps`` values.
    """

    def __init__(
        self,
        env: gym.Env,
        n_obs_steps: int,
        n_action_steps: int,
        max_episode_steps: int | None = None,
        reward_agg_method: str = "max",
    ):
        super().__init__(env)
        if reward_agg_method not in REWARD_AGG_METHODS:
            raise ValueError(
                f"reward_agg_method={reward_agg_method!r} is not one of {REWARD_AGG_METHODS}"
            )
        if n_obs_steps < 1 or n_action_steps < 1:
            raise ValueError(
                f"n_obs_steps={n_obs_steps} and n_action_steps={n_action_steps} must both be >= 1"
            )
        self.action_space = repeated_space(env.action_space, n_action_steps)
        self.observation_space = repeated_space(env.observation_space, n_obs_steps)
        self.n_obs_steps = n_obs_steps
        self.n_action_steps = n_action_steps
        self.max_episode_steps = max_episode_steps
        self.reward_agg_method = reward_agg_method
        self._clear_episode()

    def _clear_episode(self) -> None:
        # One extra slot, as upstream: room for the observation an action chunk ends on.
        self.obs: deque = deque(maxlen=self.n_obs_steps + 1)
        self.reward: list[float] = []
        self.done: list[bool] = []
        self.terminated = False
        self.truncated = False
        self.info: defaultdict[str, deque] = defaultdict(lambda: deque(maxlen=self.n_obs_steps + 1))

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._clear_episode()
        self.obs.append(obs)
        return self._get_obs(self.n_obs_steps), info

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Step the inner env with each row of ``action`` ``(Ta, *action_shape)``."""
        if len(action) == 0:
            raise ValueError("MultiStepWrapper.step got an empty action sequence (Ta = 0)")
        for act in action:
            if self.done and self.done[-1]:
                break
            obs, reward, terminated, truncated, info = self.env.step(act)
            self.obs.append(obs)
            self.reward.append(float(reward))
            if self.max_episode_steps is not None and len(self.reward) >= self.max_episode_steps:
                truncated = True
            self.terminated |= bool(terminated)
            self.truncated |= bool(truncated)
            self.done.append(bool(terminated or truncated))
            for key, value in info.items():
                self.info[key].append(value)

        reward = aggregate(self.reward, self.reward_agg_method)
        info = {key: _take_last_n(values, self.n_obs_steps) for key, values in self.info.items()}
        return self._get_obs(self.n_obs_steps), reward, self.terminated, self.truncated, info

    def _get_obs(self, n_steps: int = 1) -> np.ndarray | dict[str, np.ndarray]:
        """The last ``n_steps`` observations, ``(n_steps, *obs_shape)`` per key."""
        if isinstance(self.observation_space, spaces.Dict):
            return {
                key: stack_last_n_obs([obs[key] for obs in self.obs], n_steps)
                for key in self.observation_space.keys()
            }
        return stack_last_n_obs(self.obs, n_steps)

    def get_rewards(self) -> list[float]:
        """Every inner-step reward of the current episode."""
        return self.reward

    def get_infos(self) -> dict[str, list]:
        """The last ``n_obs_steps + 1`` values of each inner info key."""
        return {key: list(values) for key, values in self.info.items()}


def _take_last_n(values: Sequence, n: int) -> np.ndarray:
    values = list(values)
    return np.array(values[-min(len(values), n) :])
