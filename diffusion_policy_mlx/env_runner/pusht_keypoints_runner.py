"""Evaluate a low-dimensional (keypoint) policy on PushT (upstream's PushTKeypointsRunner)."""

from pathlib import Path

import gymnasium as gym
import mlx.core as mx
import numpy as np

from diffusion_policy_mlx.env.pusht.pusht_keypoints_env import PushTKeypointsEnv
from diffusion_policy_mlx.env_runner.base_lowdim_runner import BaseLowdimRunner
from diffusion_policy_mlx.env_runner.rollout import (
    RolloutRunner,
    VectorRollout,
    past_action_input,
    plan_episodes,
    recorded_env,
)


class PushTKeypointsRunner(RolloutRunner, BaseLowdimRunner):
    """Rolls a low-dim policy out on ``n_train`` + ``n_test`` seeded PushT keypoint episodes.

    Upstream's kwargs and log keys. Each control step makes one batched ``predict_action`` call
    on ``{"obs": (B, To, Do) float32, "obs_mask": (B, To, Do) bool}`` (plus ``past_action``
    ``(B, To - 1, Da)`` when enabled); ``Do = 20`` (9 block keypoints and the agent, xy), 24
    with ``agent_keypoints``. Latency is simulated as upstream: the env keeps
    ``n_obs_steps + n_latency_steps`` observations, the policy sees the oldest ``n_obs_steps``,
    and the first ``n_latency_steps`` predicted actions are dropped (so the policy must predict
    ``n_action_steps + n_latency_steps``). Videos of the first ``n_train_vis`` / ``n_test_vis``
    episodes go to ``output_dir/media/*.mp4``.

    ``vector_env`` (not upstream's): ``"sync"`` steps the envs in this process, ``"async"`` in
    one worker process each. Sync is the default: on a 2-core machine async gained nothing
    (``benchmarks/bench_rollout.py``; on CPU ``predict_action`` takes ~99% of a control step)
    and costs seconds of start-up. Async pays on many cores when the policy is fast (GPU) and
    env steps add up (many image envs).
    """

    def __init__(
        self,
        output_dir: str | Path,
        keypoint_visible_rate: float = 1.0,
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
        n_latency_steps: int = 0,
        fps: int = 10,
        crf: int = 22,
        agent_keypoints: bool = False,
        past_action: bool = False,
        tqdm_interval_sec: float = 5.0,
        n_envs: int | None = None,
        vector_env: str = "sync",
    ):
        super().__init__(output_dir)
        episodes = plan_episodes(
            n_train, n_train_vis, train_start_seed, n_test, n_test_vis, test_start_seed
        )
        kp_kwargs = PushTKeypointsEnv.genenerate_keypoint_manager_params()

        def env_fn() -> gym.Env:
            # upstream records every step here whatever the fps
            return recorded_env(
                PushTKeypointsEnv(
                    legacy=legacy_test,
                    keypoint_visible_rate=keypoint_visible_rate,
                    agent_keypoints=agent_keypoints,
                    **kp_kwargs,
                ),
                n_obs_steps=n_obs_steps + n_latency_steps,
                n_action_steps=n_action_steps,
                max_steps=max_steps,
                fps=fps,
                crf=crf,
            )

        self.rollout = VectorRollout(
            env_fn,
            n_envs=n_envs,
            episodes=episodes,
            output_dir=self.output_dir,
            max_steps=max_steps,
            vector_env=vector_env,
            tqdm_interval_sec=tqdm_interval_sec,
            desc="Eval PushtKeypointsRunner",
        )
        self.agent_keypoints = agent_keypoints
        self.n_obs_steps = n_obs_steps
        self.n_action_steps = n_action_steps
        self.n_latency_steps = n_latency_steps
        self.past_action = past_action
        self.max_steps = max_steps

    def policy_input(self, obs: np.ndarray, past_action: np.ndarray | None) -> dict[str, mx.array]:
        """The oldest ``n_obs_steps`` of ``obs`` (B, To + latency, 2 * Do), values then their
        visibility mask: ``{"obs": (B, To, Do) float32, "obs_mask": (B, To, Do) bool}``, plus
        ``past_action`` when enabled."""
        do = obs.shape[-1] // 2
        obs_dict = {
            "obs": mx.array(obs[:, : self.n_obs_steps, :do].astype(np.float32)),
            "obs_mask": mx.array(obs[:, : self.n_obs_steps, do:] > 0.5),
        }
        if self.past_action and past_action is not None:
            obs_dict["past_action"] = past_action_input(past_action, self.n_obs_steps)
        return obs_dict

    def env_action(self, action: np.ndarray) -> np.ndarray:
        """The first ``n_latency_steps`` predicted actions fall in the simulated latency."""
        return action[:, self.n_latency_steps :]
