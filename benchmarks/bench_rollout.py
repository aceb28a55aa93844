"""Where does rollout time go? PushT env steps, vector envs (sync vs async), and the policy.

* ``env``: one ``PushTImageEnv`` / ``PushTKeypointsEnv`` step, and a keypoints-env render
  (what video recording adds per recorded step).
* ``runner``: a runner with a random policy (so: envs, wrappers, video, batching only), ms per
  control step (``n_action_steps`` env steps of every env) for each ``--n-envs`` and vector env
  kind. Two of the episodes are recorded, as in upstream's configs.
* ``policy``: the runner with the default policy of upstream's workspace config for the task
  (``train_diffusion_unet_hybrid_workspace`` + ``pusht_image``,
  ``train_diffusion_unet_lowdim_workspace`` + ``pusht_lowdim``; untrained weights, normalizer
  fitted on the PushT data): per control step, time in ``predict_action`` and the rest.

    python benchmarks/bench_rollout.py env
    python benchmarks/bench_rollout.py runner --task pusht_image --n-envs 8 28 56
    python benchmarks/bench_rollout.py policy --task pusht_lowdim --n-envs 56 --zarr ../shared/data/pusht/pusht_cchi_v7_replay.zarr
"""

import diffusion_policy_mlx.accel as accel

# isort: split
import argparse
import os
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import diffusion_policy_mlx.config_compat  # noqa: F401  (registers the ${eval:...} resolver)
from diffusion_policy_mlx.env.pusht.pusht_image_env import PushTImageEnv
from diffusion_policy_mlx.env.pusht.pusht_keypoints_env import PushTKeypointsEnv
from diffusion_policy_mlx.env_runner.pusht_image_runner import PushTImageRunner
from diffusion_policy_mlx.env_runner.pusht_keypoints_runner import PushTKeypointsRunner

REPO = Path(__file__).resolve().parents[1]
WORKSPACES = {
    "pusht_lowdim": "train_diffusion_unet_lowdim_workspace",
    "pusht_image": "train_diffusion_unet_hybrid_workspace",
}
N_OBS, N_ACT = 2, 8


class RandomPolicy:
    """Uniform actions over the 512 x 512 workspace: a policy that costs nothing."""

    def __init__(self, n_action_steps: int):
        self.n_action_steps = n_action_steps
        self.rng = np.random.default_rng(0)

    def predict_action(self, obs_dict: dict[str, mx.array]) -> dict[str, mx.array]:
        batch = next(iter(obs_dict.values())).shape[0]
        action = self.rng.uniform(0, 512, (batch, self.n_action_steps, 2)).astype(np.float32)
        return {"action": mx.array(action)}

    def reset(self) -> None:
        pass


class TimedPolicy:
    """Wraps a policy and adds up the seconds spent in ``predict_action`` (results evaluated)."""

    def __init__(self, policy):
        self.policy = policy
        self.seconds = 0.0
        self.calls = 0

    def predict_action(self, obs_dict: dict[str, mx.array]) -> dict[str, mx.array]:
        start = time.perf_counter()
        result = self.policy.predict_action(obs_dict)
        mx.eval(result["action"])
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return result

    def reset(self) -> None:
        self.policy.reset()


def time_call(fn, n: int) -> str:
    """Wall and CPU milliseconds per call (CPU time is what a busy machine does not inflate)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return f"{wall / n * 1e3:.2f} ms ({cpu / n * 1e3:.2f} ms CPU)"


def bench_env(n_steps: int) -> None:
    rng = np.random.default_rng(0)
    for cls in (PushTImageEnv, PushTKeypointsEnv):
        env = cls()
        env.reset(seed=0)
        step = time_call(lambda env=env: env.step(rng.uniform(0, 512, 2)), n_steps)
        render = time_call(env.render, n_steps)
        print(f"{cls.__name__}: step {step}, render {render}")


def make_runner(
    task: str,
    output_dir: str,
    n_envs: int,
    vector_env: str,
    max_steps: int,
    n_obs_steps: int = N_OBS,
    n_action_steps: int = N_ACT,
):
    cls = PushTImageRunner if task == "pusht_image" else PushTKeypointsRunner
    return cls(
        output_dir=output_dir,
        n_train=0,
        n_train_vis=0,
        n_test=n_envs,
        n_test_vis=2,
        legacy_test=True,
        max_steps=max_steps,
        n_obs_steps=n_obs_steps,
        n_action_steps=n_action_steps,
        n_envs=n_envs,
        vector_env=vector_env,
        tqdm_interval_sec=60.0,
    )


def bench_runner(task: str, n_envs_list: list[int], kinds: list[str], max_steps: int) -> None:
    n_control = max_steps // N_ACT
    with tempfile.TemporaryDirectory() as output_dir:
        for n_envs in n_envs_list:
            for kind in kinds:
                start = time.perf_counter()
                runner = make_runner(task, output_dir, n_envs, kind, max_steps)
                created, cpu = time.perf_counter(), time.process_time()
                runner.run(RandomPolicy(N_ACT))
                ran, cpu = time.perf_counter(), time.process_time() - cpu
                runner.close()
                per_control = (ran - created) / n_control
                print(
                    f"{task} n_envs={n_envs} {kind}: {per_control * 1e3:.0f} ms/control step "
                    f"({per_control / (n_envs * N_ACT) * 1e3:.2f} ms/env step; this process's "
                    f"CPU {cpu / n_control * 1e3:.0f} ms/control step), "
                    f"start {created - start:.2f} s"
                )


def load_policy(task: str, zarr: str):
    with initialize_config_dir(config_dir=str(REPO / "config"), version_base=None):
        cfg = compose(
            config_name=WORKSPACES[task],
            overrides=[f"task={task}", f"task.dataset.zarr_path={zarr}"],
        )
    dataset = instantiate(cfg.task.dataset)
    accel.configure(None, cfg.get("accel"))
    policy = accel.apply(instantiate(cfg.policy))
    policy.set_normalizer(dataset.get_normalizer())
    policy.eval()
    return policy, cfg


def bench_policy(task: str, n_envs_list: list[int], kind: str, zarr: str, n_control: int) -> None:
    policy, cfg = load_policy(task, zarr)
    n_obs, n_act = int(cfg.n_obs_steps), int(cfg.n_action_steps)
    with tempfile.TemporaryDirectory() as output_dir:
        for n_envs in n_envs_list:
            runner = make_runner(task, output_dir, n_envs, kind, n_control * n_act, n_obs, n_act)
            timed = TimedPolicy(policy)
            # one warm-up batch (compilation), then the measured one
            runner.run(timed)
            timed.seconds, timed.calls = 0.0, 0
            start = time.perf_counter()
            runner.run(timed)
            total = (time.perf_counter() - start) / timed.calls
            runner.close()
            in_policy = timed.seconds / timed.calls
            print(
                f"{task} n_envs={n_envs} {kind}: {total * 1e3:.0f} ms/control step, "
                f"predict_action {in_policy * 1e3:.0f} ms ({in_policy / total:.0%}), "
                f"envs and the rest {(total - in_policy) * 1e3:.0f} ms"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["env", "runner", "policy"])
    parser.add_argument("--task", choices=sorted(WORKSPACES), default="pusht_image")
    parser.add_argument("--n-envs", type=int, nargs="+", default=[8, 28, 56])
    parser.add_argument("--kinds", nargs="+", default=["sync", "async"])
    parser.add_argument("--max-steps", type=int, default=48)
    parser.add_argument("--zarr", default="data/pusht/pusht_cchi_v7_replay.zarr")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, MLX default device {mx.default_device()}")
    if args.part == "env":
        bench_env(200)
    elif args.part == "runner":
        bench_runner(args.task, args.n_envs, args.kinds, args.max_steps)
    else:
        bench_policy(args.task, args.n_envs, args.kinds[0], args.zarr, n_control=2)


if __name__ == "__main__":
    main()
