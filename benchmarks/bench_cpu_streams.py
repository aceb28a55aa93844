"""A batch split over one MLX CPU stream per core (``accel/cpu_streams.py``) against one
stream, in whole ``predict_action`` calls of a default policy at batch 56 (DDIM 16), same
process, same weights and noise, alternating call by call:

    python benchmarks/bench_cpu_streams.py
    python benchmarks/bench_cpu_streams.py --config train_diffusion_unet_hybrid_workspace

The training step's counterpart is ``DP_MLX_CPU_STREAMS=1 python benchmarks/bench_train_step.py``
against the same command without the variable. Prints one JSON line: each path's median, their
ratio and the largest difference between their actions.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

import diffusion_policy_mlx.accel as accel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_ab import accel_path, compare_paths  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="train_diffusion_unet_lowdim_workspace")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = accel.configure("cpu")
    compare_paths(
        args.config,
        "cpu",
        args.repeats,
        {
            "one_stream": accel_path(dataclasses.replace(config, cpu_streams=1)),
            "split": accel_path(config),
        },
        ("ddim16_b56",),
    )


if __name__ == "__main__":
    main()
