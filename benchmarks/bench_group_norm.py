"""The fused GroupNorm + Mish + FiLM kernel (``model/common/group_norm_mish.py``) against MLX's
ops, in whole ``predict_action`` calls of the default policies, same process, same weights and
noise. Needs MLX's CUDA backend (the kernel's only home):

    python benchmarks/bench_group_norm.py                          # lowdim U-Net
    python benchmarks/bench_group_norm.py --config train_diffusion_unet_hybrid_workspace

Prints one JSON line per (scheduler steps, batch): median wall time of each path, their ratio
and the largest difference between the two paths' actions.
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

from diffusion_policy_mlx.model.common import group_norm_mish
from diffusion_policy_mlx.model.diffusion import conv1d_components
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
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if not group_norm_mish.fused_available():
        sys.exit("bench_group_norm.py needs MLX's CUDA backend (pip install -e '.[cuda]')")

    cfg, workspace = build(args.config, ["training.device=gpu"])
    policy = workspace.model
    _, normalizer = synthetic(cfg, 56)
    policy.set_normalizer(normalizer)
    policy.eval()
    obs56 = {k: mx.array(v) for k, v in synthetic_obs(cfg, 56, cfg.n_obs_steps, seed=3).items()}
    obs1 = {k: v[:1] for k, v in obs56.items()}
    ddpm = policy.noise_scheduler
    ddim_cfg = translate_config(compose_config(CONFIG_DIR, DDIM_CONFIG, "pusht_image", []))
    ddim = hydra.utils.instantiate(ddim_cfg.policy.noise_scheduler)

    def run(fused: bool, obs: dict, scheduler, steps: int) -> tuple[float, np.ndarray]:
        # Conv1dBlock asks this module-level name; a fresh step cache retraces with it.
        conv1d_components.fused_available = lambda: fused
        policy.step_cache = CompiledStepCache()
        policy.noise_scheduler = scheduler
        policy.num_inference_steps = steps
        times = []
        for i in range(args.repeats + 2):
            mx.random.seed(0)
            start = time.perf_counter()
            action = policy.predict_action(obs)["action"]
            mx.eval(action)
            if i >= 2:
                times.append(time.perf_counter() - start)
        return statistics.median(times), np.array(action)

    for name, scheduler, steps, obs in [
        ("DDPM", ddpm, 100, obs1),
        ("DDIM", ddim, 16, obs1),
        ("DDIM", ddim, 16, obs56),
    ]:
        ops_s, ops_action = run(False, obs, scheduler, steps)
        fused_s, fused_action = run(True, obs, scheduler, steps)
        print(
            json.dumps(
                {
                    "config": args.config,
                    "device": str(mx.default_device()),
                    "scheduler": f"{name}{steps}",
                    "batch": next(iter(obs.values())).shape[0],
                    "ops_ms": round(1e3 * ops_s, 2),
                    "fused_ms": round(1e3 * fused_s, 2),
                    "speedup": round(ops_s / fused_s, 3),
                    "max_action_diff": float(np.abs(ops_action - fused_action).max()),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
