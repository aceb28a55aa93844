"""Start-up cost of a policy: wall time of the first ``predict_action`` calls (graph tracing and,
on the GPU, kernel compilation) against the steady-state call.

    python benchmarks/bench_startup.py --device gpu          # lowdim U-Net, DDIM 16 steps, batch 1
    MLX_PTX_CACHE_DIR=/tmp/ptx python benchmarks/bench_startup.py --device gpu   # run it twice

MLX's CUDA backend compiles the fused kernels of ``mx.compile``d graphs with NVRTC on first use;
with ``MLX_PTX_CACHE_DIR`` set it keeps the compiled kernels on disk, so a second process (a
resumed run, ``eval.py`` after ``train.py``) skips that work. Run the command twice with the same
directory to see both costs. Prints one JSON line.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import diffusion_policy_mlx.accel  # noqa: F401  (loads the fast BLAS)

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import build, synthetic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config",
        default="train_diffusion_unet_ddim_lowdim_workspace",
        help="a workspace config; its noise scheduler is used",
    )
    parser.add_argument("--device", default="cpu", help="cpu or gpu")
    parser.add_argument("--steps", type=int, default=16, help="denoising steps")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    start = time.perf_counter()
    overrides = [f"training.device={args.device}", f"policy.num_inference_steps={args.steps}"]
    cfg, workspace = build(args.config, overrides)
    batch, normalizer = synthetic(cfg, args.batch)
    policy = workspace.model
    policy.set_normalizer(normalizer)
    policy.eval()
    if "obs_dim" in cfg:
        obs = {"obs": batch["obs"][:, : cfg.n_obs_steps]}
    else:
        obs = {k: v[:, : cfg.n_obs_steps] for k, v in batch["obs"].items()}
    built = time.perf_counter() - start

    def call() -> float:
        t = time.perf_counter()
        mx.eval(policy.predict_action(obs)["action"])
        return time.perf_counter() - t

    first, second = call(), call()
    steady = statistics.median(call() for _ in range(args.repeats))
    print(
        json.dumps(
            {
                "config": args.config,
                "device": str(mx.default_device()),
                "scheduler": type(policy.noise_scheduler).__name__,
                "steps": args.steps,
                "batch": args.batch,
                "ptx_cache_dir": os.environ.get("MLX_PTX_CACHE_DIR"),
                "build_s": round(built, 3),
                "first_call_s": round(first, 3),
                "second_call_s": round(second, 3),
                "steady_call_s": round(steady, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
