"""Step several envs as one batch with gymnasium's vector envs, the way rollouts need them.

Rollouts differ from training-time RL in two ways, both handled here:

* No autoreset. An episode's rewards and video must survive until every env of the batch is
  done, so a finished env is stepped again (its :class:`MultiStepWrapper` ignores the actions)
  instead of being reset. gymnasium's ``AsyncVectorEnv`` permits that with
  ``AutoresetMode.DISABLED``; its ``SyncVectorEnv`` asserts against it, which
  :class:`SyncVectorEnv` lifts.
* Per-env setup before each batch of episodes uses gymnasium's per-env channels:
  ``env.set_attr(name, [value_0, value_1, ...])`` (which reaches the wrapper that owns ``name``,
  e.g. ``file_path`` of the ``VideoRecordingWrapper``) and ``env.reset(seed=[seed_0, ...])``.
"""

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
from gymnasium.vector import AutoresetMode, VectorEnv

VECTOR_ENV_KINDS = ("sync", "async")


class SyncVectorEnv(gym.vector.SyncVectorEnv):
    """gymnasium's ``SyncVectorEnv`` without autoreset, where finished envs may be stepped again.

    All envs run in this process, one after another: best when envs are cheap next to the
    policy, or when there are few CPU cores.
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], **kwargs: Any):
        super().__init__(env_fns, autoreset_mode=AutoresetMode.DISABLED, **kwargs)

    def step(self, actions):
        # gymnasium marks envs that reported done and asserts they are reset before the next step;
        # rollouts step them again on purpose (see the module docstring).
        self._autoreset_envs[:] = False
        return super().step(actions)


def make_vector_env(
    env_fns: Sequence[Callable[[], gym.Env]], kind: str = "sync", context: str | None = None
) -> VectorEnv:
    """A vector env over ``env_fns`` with autoreset disabled.

    ``kind="sync"`` steps the envs in this process; ``kind="async"`` gives each its own worker
    process (``context``: the multiprocessing start method, the platform default if ``None``),
    which pays when env steps (physics, rendering) outweigh the inter-process copies.
    """
    if kind == "sync":
        return SyncVectorEnv(env_fns)
    if kind == "async":
        return gym.vector.AsyncVectorEnv(
            env_fns, autoreset_mode=AutoresetMode.DISABLED, context=context
        )
    raise ValueError(f"vector env kind {kind!r} is not one of {VECTOR_ENV_KINDS}")
