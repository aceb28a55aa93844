"""FiLM features computed ahead of the denoising loop (``ConditionalUnet1D.film_tables``) against
computing them in every step, in whole ``predict_action`` calls of a default policy, same
process, same weights and noise:

    python benchmarks/bench_film_tables.py                       # lowdim U-Net on the CPU
    python benchmarks/bench_film_tables.py --device gpu
    python benchmarks/bench_film_tables.py --config train_diffusion_unet_hybrid_workspace

Prints one JSON line per (scheduler steps, batch): median wall time of each path (the two
alternate call by call), their ratio and the largest difference between their actions.
"""

# Before mlx.core: the package loads the fast CPU BLAS on import.
import diffusion_policy_mlx  # noqa: F401, I001

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import hydra
import mlx.core as mx
import numpy as np

from diffusion_policy_mlx.policy import diffusion_common
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="train_diffusion_unet_lowdim_workspace")
    parser.add_argument("--device", default="cpu", help="cpu or gpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-b56", action="store_true", help="skip the batch-56 DDIM 16 call")
    args = parser.parse_args()

    cfg, workspace = build(args.config, [f"training.device={args.device}"])
    policy = workspace.model
    _, normalizer = synthetic(cfg, 56)
    policy.set_normalizer(normalizer)
    policy.eval()
    obs56 = {k: mx.array(v) for k, v in synthetic_obs(cfg, 56, cfg.n_obs_steps, seed=3).items()}
    obs1 = {k: v[:1] for k, v in obs56.items()}
    ddpm = policy.noise_scheduler
    ddim_cfg = translate_config(compose_config(CONFIG_DIR, DDIM_CONFIG, "pusht_image", []))
    ddim = hydra.utils.instantiate(ddim_cfg.policy.noise_scheduler)

    def run(obs: dict, scheduler, steps: int) -> dict[bool, tuple[list[float], np.ndarray]]:
        """Both paths, alternating call by call (this machine's speed drifts), each with its
        own step cache: a step traces with or without the tables' inputs."""
        caches = {False: CompiledStepCache(), True: CompiledStepCache()}
        policy.noise_scheduler = scheduler
        policy.num_inference_steps = steps
        times: dict[bool, list[float]] = {False: [], True: []}
        actions = {}
        for i in range(args.repeats + 2):
            for tables in (False, True):
                diffusion_common.PRECOMPUTE_FILM = tables
                policy.step_cache = caches[tables]
                mx.random.seed(0)
                start = time.perf_counter()
                action = policy.predict_action(obs)["action"]
                mx.eval(action)
                if i >= 2:
                    times[tables].append(time.perf_counter() - start)
                actions[tables] = np.array(action)
        return {tables: (times[tables], actions[tables]) for tables in (False, True)}

    cases = [("DDPM", ddpm, 100, obs1), ("DDIM", ddim, 16, obs1)]
    if not args.no_b56:
        cases.append(("DDIM", ddim, 16, obs56))
    for name, scheduler, steps, obs in cases:
        results = run(obs, scheduler, steps)
        (per_step_s, per_step_action), (tables_s, tables_action) = results[False], results[True]
        per_step, tables = statistics.median(per_step_s), statistics.median(tables_s)
        print(
            json.dumps(
                {
                    "config": args.config,
                    "device": str(mx.default_device()),
                    "scheduler": f"{name}{steps}",
                    "batch": next(iter(obs.values())).shape[0],
                    "per_step_ms": round(1e3 * per_step, 2),
                    "tables_ms": round(1e3 * tables, 2),
                    "speedup": round(per_step / tables, 3),
                    "max_action_diff": float(np.abs(per_step_action - tables_action).max()),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
