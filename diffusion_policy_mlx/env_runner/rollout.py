"""The rollout every simulation runner shares: batches of seeded episodes on a vector env.

Upstream copies this loop into each runner; here a task's runner is an adapter that says how to
build one env (:func:`recorded_env` around the task's gymnasium env) and how to turn the vector
env's observations into a policy call (:meth:`RolloutRunner.policy_input`). Nothing here is
specific to a task.
"""

import math
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import mlx.core as mx
import numpy as np
import tqdm

from diffusion_policy_mlx.gym_util.multistep_wrapper import MultiStepWrapper
from diffusion_policy_mlx.gym_util.vector_env import make_vector_env
from diffusion_policy_mlx.gym_util.video_recording_wrapper import (
    VideoRecorder,
    VideoRecordingWrapper,
)

# act(obs, past_action) -> actions (B, Ta, Da); obs is the vector env's batched observation and
# past_action the previous call's actions in this batch of episodes (None on the first call).
ActFn = Callable[[Any, np.ndarray | None], np.ndarray]


@dataclass(frozen=True)
class EpisodeSpec:
    """One evaluation episode: its log prefix (``train/``, ``test/``), env seed, video or not."""

    prefix: str
    seed: int
    record_video: bool


def plan_episodes(
    n_train: int,
    n_train_vis: int,
    train_start_seed: int,
    n_test: int,
    n_test_vis: int,
    test_start_seed: int,
) -> list[EpisodeSpec]:
    """Upstream's evaluation plan: ``n_train`` seeds from ``train_start_seed`` (the first
    ``n_train_vis`` recorded), then ``n_test`` from ``test_start_seed`` (first ``n_test_vis``)."""
    for name, value in [("n_train", n_train), ("n_test", n_test)]:
        if value < 0:
            raise ValueError(f"env_runner.{name} must be >= 0, got {value}")
    if n_train + n_test == 0:
        raise ValueError("env_runner has no episodes to run: n_train and n_test are both 0")
    return [
        EpisodeSpec("train/", train_start_seed + i, i < n_train_vis) for i in range(n_train)
    ] + [EpisodeSpec("test/", test_start_seed + i, i < n_test_vis) for i in range(n_test)]


@dataclass
class EpisodeResult:
    """What one episode left: every step's reward and the video path (if recorded)."""

    spec: EpisodeSpec
    rewards: list[float]
    video_path: str | None


def past_action_input(past_action: np.ndarray, n_obs_steps: int) -> mx.array:
    """The ``(B, To - 1, Da)`` actions before the current step that a policy conditioned on past
    actions reads, from the env's ``(B, T, Da)`` history."""
    return mx.array(past_action[:, past_action.shape[1] - (n_obs_steps - 1) :].astype(np.float32))


def recorded_env(
    env: gym.Env,
    *,
    n_obs_steps: int,
    n_action_steps: int,
    max_steps: int,
    fps: int,
    crf: int,
    steps_per_render: int = 1,
) -> MultiStepWrapper:
    """``env`` as a runner steps it: recording h264 videos (every ``steps_per_render``-th step,
    when given a file path) and taking ``n_action_steps`` actions per call with the last
    ``n_obs_steps`` observations stacked."""
    return MultiStepWrapper(
        VideoRecordingWrapper(
            env,
            video_recorder=VideoRecorder.create_h264(fps=fps, crf=crf),
            steps_per_render=steps_per_render,
        ),
        n_obs_steps=n_obs_steps,
        n_action_steps=n_action_steps,
        max_episode_steps=max_steps,
    )


class VectorRollout:
    """Runs a list of episodes ``n_envs`` at a time on a vector env of ``env_fn()`` copies.

    Each env must be a :class:`MultiStepWrapper` around a :class:`VideoRecordingWrapper`. Every
    batch gives each env its seed and video path, resets, then calls ``act`` once per control
    step for all envs together until every episode is done. The last batch is padded with extra
    (unrecorded, unreported) episodes so the policy always sees ``n_envs`` rows. ``n_envs=None``
    runs every episode at once.
    """

    def __init__(
        self,
        env_fn: Callable[[], gym.Env],
        n_envs: int | None,
        episodes: Sequence[EpisodeSpec],
        output_dir: str | Path,
        max_steps: int,
        vector_env: str = "sync",
        tqdm_interval_sec: float = 5.0,
        desc: str = "Eval",
    ):
        if n_envs is None:
            n_envs = len(episodes)
        if n_envs < 1:
            raise ValueError(
                f"env_runner.n_envs must be >= 1 (or null for one env per episode), got {n_envs}"
            )
        self.env = make_vector_env([env_fn] * n_envs, kind=vector_env)
        self.n_envs = n_envs
        self.episodes = list(episodes)
        self.media_dir = Path(output_dir) / "media"
        self.max_steps = max_steps
        self.tqdm_interval_sec = tqdm_interval_sec
        self.desc = desc

    def run(self, act: ActFn, on_batch_start: Callable[[], None]) -> list[EpisodeResult]:
        """Roll every episode out; ``on_batch_start`` runs before each batch (policy reset)."""
        run_id = uuid.uuid4().hex[:8]
        n_batches = math.ceil(len(self.episodes) / self.n_envs)
        results: list[EpisodeResult] = []
        for batch_idx in range(n_batches):
            batch = self.episodes[batch_idx * self.n_envs : (batch_idx + 1) * self.n_envs]
            padding = [EpisodeSpec(batch[0].prefix, batch[0].seed, False)] * (
                self.n_envs - len(batch)
            )
            video_paths = [
                str(self.media_dir / f"{spec.prefix.rstrip('/')}_{spec.seed}_{run_id}.mp4")
                if spec.record_video
                else None
                for spec in batch + padding
            ]
            self.env.set_attr("file_path", video_paths)
            obs, _ = self.env.reset(seed=[spec.seed for spec in batch + padding])
            on_batch_start()

            past_action = None
            done = False
            with tqdm.tqdm(
                total=self.max_steps,
                desc=f"{self.desc} {batch_idx + 1}/{n_batches}",
                leave=False,
                mininterval=self.tqdm_interval_sec,
            ) as pbar:
                while not done:
                    action = act(obs, past_action)
                    self._check_action(action)
                    obs, _, terminated, truncated, _ = self.env.step(action)
                    done = bool(np.all(terminated | truncated))
                    past_action = action
                    pbar.update(action.shape[1])

            written = self.env.call("stop_recording")
            rewards = self.env.get_attr("reward")
            results.extend(
                EpisodeResult(spec, list(rewards[i]), written[i]) for i, spec in enumerate(batch)
            )
        return results

    def _check_action(self, action: np.ndarray) -> None:
        action_dim = self.env.single_action_space.shape[-1]
        if action.ndim != 3 or action.shape[0] != self.n_envs or action.shape[2] != action_dim:
            raise ValueError(
                f"the policy's action has shape {action.shape}; the runner needs "
                f"(n_envs={self.n_envs}, n_action_steps, {action_dim}): check the policy's "
                "n_action_steps and the task's action dimension"
            )
        if action.shape[1] == 0:
            raise ValueError(
                "the policy returned no actions to execute (Ta = 0); with n_latency_steps the "
                "policy must predict n_action_steps + n_latency_steps actions"
            )

    def close(self) -> None:
        self.env.close()


def summarize(results: Sequence[EpisodeResult]) -> dict[str, float | str]:
    """Upstream's log: ``<prefix>sim_max_reward_<seed>`` and ``<prefix>sim_video_<seed>`` (mp4
    path) per episode, then ``<prefix>mean_score``, the mean of the per-episode max rewards."""
    log: dict[str, float | str] = {}
    max_rewards: defaultdict[str, list[float]] = defaultdict(list)
    for result in results:
        prefix, seed = result.spec.prefix, result.spec.seed
        max_reward = float(np.max(result.rewards))
        max_rewards[prefix].append(max_reward)
        log[f"{prefix}sim_max_reward_{seed}"] = max_reward
        if result.video_path is not None:
            log[f"{prefix}sim_video_{seed}"] = result.video_path
    for prefix, values in max_rewards.items():
        log[f"{prefix}mean_score"] = float(np.mean(values))
    return log


class RolloutRunner:
    """``run`` and ``close`` of a runner whose ``rollout`` is a :class:`VectorRollout`: a task's
    runner mixes this in next to ``BaseLowdimRunner`` or ``BaseImageRunner``, builds
    ``self.rollout`` and says what the policy sees (:meth:`policy_input`) and which of its
    actions the envs execute (:meth:`env_action`)."""

    rollout: VectorRollout

    def policy_input(self, obs: Any, past_action: np.ndarray | None) -> dict[str, mx.array]:
        """``predict_action``'s ``obs_dict`` for the vector env's batched observation ``obs``
        (``past_action``: the previous call's actions in this batch of episodes, or None)."""
        raise NotImplementedError

    def env_action(self, action: np.ndarray) -> np.ndarray:
        """The actions (B, Ta, Da) the envs execute, of the policy's (B, Ta', Da)."""
        return action

    def run(self, policy: Any) -> dict[str, float | str]:
        """Roll ``policy`` out on every episode; returns upstream's log dict (videos as paths)."""

        def act(obs: Any, past_action: np.ndarray | None) -> np.ndarray:
            action = policy.predict_action(self.policy_input(obs, past_action))["action"]
            return self.env_action(np.array(action))

        return summarize(self.rollout.run(act, on_batch_start=policy.reset))

    def close(self) -> None:
        """Shut the envs (and their worker processes) down."""
        self.rollout.close()
