"""The fused GroupNorm + Mish + FiLM kernel (``accel/group_norm_mish.py``) against MLX's
ops, in whole ``predict_action`` calls of the default policies, same process, same weights and
noise. Needs MLX's CUDA backend (the kernel's only home):

    python benchmarks/bench_group_norm.py                          # lowdim U-Net
    python benchmarks/bench_group_norm.py --config train_diffusion_unet_hybrid_workspace

Prints one JSON line per (scheduler steps, batch): median wall time of each path (the two
alternate call by call), their ratio and the largest difference between their actions.
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
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    config = accel.configure("gpu")
    if not config.fused_group_norm:
        sys.exit("bench_group_norm.py needs MLX's CUDA backend (pip install -e '.[cuda]')")
    ops = dataclasses.replace(config, fused_group_norm=False)
    compare_paths(
        args.config, "gpu", args.repeats, {"ops": accel_path(ops), "fused": accel_path(config)}
    )


if __name__ == "__main__":
    main()
