"""Shared by the lever benchmarks (``bench_group_norm.py``, ``bench_film_tables.py``): two paths
of a default policy's ``predict_action`` in one process, same weights and noise, alternating
call by call (a shared machine's speed drifts; on the 2-core development machine it flips
between two levels), each path with its own compiled-step cache."""

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import hydra
import mlx.core as mx
import numpy as np

from diffusion_policy_mlx.policy.diffusion_common import CompiledStepCache

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import build, synthetic  # noqa: E402
from sides import (  # noqa: E402
    CONFIG_DIR,
    DDIM_CONFIG,
    compose_config,
    synthetic_obs,
    translate_config,
)

CASES = ("ddpm100_b1", "ddim16_b1", "ddim16_b56")


def compare_paths(
    config: str,
    device: str,
    repeats: int,
    paths: dict[str, Callable[[], None]],
    cases: tuple[str, ...] = CASES,
) -> None:
    """For each of ``cases`` (of :data:`CASES`), time ``predict_action`` on each of ``paths``
    (name -> a function that switches to that path) and print one JSON line per case: each
    path's median in ms, the first path's time over the second's (``speedup``) and the largest
    difference between their actions."""
    cfg, workspace = build(config, [f"training.device={device}"])
    policy = workspace.model
    _, normalizer = synthetic(cfg, 56)
    policy.set_normalizer(normalizer)
    policy.eval()
    obs56 = {k: mx.array(v) for k, v in synthetic_obs(cfg, 56, cfg.n_obs_steps, seed=3).items()}
    obs1 = {k: v[:1] for k, v in obs56.items()}
    ddim_cfg = translate_config(compose_config(CONFIG_DIR, DDIM_CONFIG, "pusht_image", []))
    ddim = hydra.utils.instantiate(ddim_cfg.policy.noise_scheduler)
    known = {
        "ddpm100_b1": ("DDPM", policy.noise_scheduler, 100, obs1),
        "ddim16_b1": ("DDIM", ddim, 16, obs1),
        "ddim16_b56": ("DDIM", ddim, 16, obs56),
    }

    names = list(paths)
    for label, scheduler, steps, obs in (known[case] for case in cases):
        policy.noise_scheduler = scheduler
        policy.num_inference_steps = steps
        # a path may change what the step traces, so each keeps its own compiled steps
        caches = {name: CompiledStepCache() for name in names}
        times: dict[str, list[float]] = {name: [] for name in names}
        actions: dict[str, np.ndarray] = {}
        for i in range(repeats + 2):
            for name in names:
                paths[name]()
                policy.step_cache = caches[name]
                mx.random.seed(0)
                start = time.perf_counter()
                action = policy.predict_action(obs)["action"]
                mx.eval(action)
                if i >= 2:
                    times[name].append(time.perf_counter() - start)
                actions[name] = np.array(action)
        medians = {name: statistics.median(times[name]) for name in names}
        first, second = names
        print(
            json.dumps(
                {
                    "config": config,
                    "device": str(mx.default_device()),
                    "scheduler": f"{label}{steps}",
                    "batch": next(iter(obs.values())).shape[0],
                    **{f"{name}_ms": round(1e3 * medians[name], 2) for name in names},
                    "speedup": round(medians[first] / medians[second], 3),
                    "max_action_diff": float(np.abs(actions[first] - actions[second]).max()),
                }
            ),
            flush=True,
        )
