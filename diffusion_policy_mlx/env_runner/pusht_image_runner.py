"""Evaluate an image policy on PushT (upstream's PushTImageRunner)."""

from pathlib import Path

import gymnasium as gym
import mlx.core as mx
import numpy as np

from diffusion_policy_mlx.env.pusht.pusht_image_env import PushTImageEnv
from diffusion_policy_mlx.env_runner.base_image_runner import BaseImageRunner
from diffusion_policy_mlx.env_runner.rollout import (
    RolloutRunner,
    VectorRollout,
    past_action_input,
    plan_episodes,
    recorded_env,
)


class PushTImageRunner(RolloutRunner, BaseImageRunner):
    """Rolls an image policy out on ``n_train`` + ``n_test`` seeded PushT episodes.

    Upstream's kwargs and log keys. Episodes run ``n_envs`` at a time (default: all at once),
    one batched ``predict_action`` per control step on ``{"image": (B, To, 3, R, R),
    "agent_pos": (B, To, 2)}`` (plus ``past_action`` ``(B, To - 1, Da)`` when enabled).
    Videos of the first ``n_train_vis`` / ``n_test_vis`` episodes go to
    ``output_dir/media/*.mp4``. ``legacy_test`` applies to every episode, as upstream.

    ``vector_env`` (not upstream's): ``"sync"`` steps the envs in this process, ``"async"`` in
    one worker process each. Sync is the default: on a 2-core machine async gained nothing
    (``benchmarks/bench_rollout.py``; on CPU ``predict_action`` takes ~99% of a control step)
    and costs seconds of start-up. Async pays on many cores when the policy is fast (GPU) and
    env steps add up (many image envs).
    """

    def __init__(
        self,
        output_dir: str | Path,
        n_train: int = 10,
        n_train_vis: int = 3,
        train_start_seed: int = 0,
        n_test: int = 22,
        n_test_vis: int = 6,
        legacy_test: bool = False,
        test_start_seed: int = 10000,
        max_steps: int = 200,
        n_obs_steps: int = 8,
        n_action_steps: int = 8,
        fps: int = 10,
        crf: int = 22,
        render_size: int = 96,
        past_action: bool = False,
        tqdm_interval_sec: float = 5.0,
        n_envs: int | None = None,
        vector_env: str = "sync",
    ):
        super().__init__(output_dir)
        episodes = plan_episodes(
            n_train, n_train_vis, train_start_seed, n_test, n_test_vis, test_start_seed
        )
        # PushT runs at 10 Hz: record every (10 // fps)-th step for fps below that.
        steps_per_render = max(10 // fps, 1)

        def env_fn() -> gym.Env:
            return recorded_env(
                PushTImageEnv(legacy=legacy_test, render_size=render_size),
                n_obs_steps=n_obs_steps,
                n_action_steps=n_action_steps,
                max_steps=max_steps,
                fps=fps,
                crf=crf,
                steps_per_render=steps_per_render,
            )

        self.rollout = VectorRollout(
            env_fn,
            n_envs=n_envs,
            episodes=episodes,
            output_dir=self.output_dir,
            max_steps=max_steps,
            vector_env=vector_env,
            tqdm_interval_sec=tqdm_interval_sec,
            desc="Eval PushtImageRunner",
        )
        self.n_obs_steps = n_obs_steps
        self.n_action_steps = n_action_steps
        self.past_action = past_action
        self.max_steps = max_steps

    def policy_input(
        self, obs: dict[str, np.ndarray], past_action: np.ndarray | None
    ) -> dict[str, mx.array]:
        """``{"image": (B, To, 3, R, R), "agent_pos": (B, To, 2)}`` float32, plus
        ``past_action`` when enabled."""
        obs_dict = {key: mx.array(value.astype(np.float32)) for key, value in obs.items()}
        if self.past_action and past_action is not None:
            obs_dict["past_action"] = past_action_input(past_action, self.n_obs_steps)
        return obs_dict
