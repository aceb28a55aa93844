"""The package's CPU kernels (``accel/few_row_matmul.py``, ``accel/amx_conv1d.py``) against
MLX's BLAS path for the same products, in whole ``predict_action`` calls of a default policy,
same process, same weights and noise:

    python benchmarks/bench_cpu_kernels.py                       # lowdim U-Net
    python benchmarks/bench_cpu_kernels.py --config train_diffusion_unet_hybrid_workspace
    python benchmarks/bench_cpu_kernels.py --paths float32 float16  # accel.cpu_weights
    python benchmarks/bench_cpu_kernels.py --paths float32 bfloat16 --cases ddim16_b56
    python benchmarks/bench_cpu_kernels.py --checkpoint RUN/checkpoints/latest.ckpt ...

The paths: ``blas`` (the extension off: MLX's operations throughout), ``float32`` (the few-row kernel on float32 weights),
``float16`` (on float16 copies, ``accel.cpu_weights=float16``) and ``bfloat16`` (batched
convolutions on AMX, ``accel.cpu_weights=bfloat16``). Prints one JSON line per (scheduler
steps, batch): median wall time of each path (the two alternate call by call), their ratio and
the largest difference between their actions. By default the batch-1 cases run: batch 56 has
too many rows for the few-row kernel, and is the case of the bfloat16 path.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

import diffusion_policy_mlx.accel as accel
from diffusion_policy_mlx.accel.settings import usable_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_ab import CASES, accel_path, compare_paths  # noqa: E402


def path_config(config: accel.AccelConfig, path: str) -> accel.AccelConfig:
    """``blas``: no extension (MLX's operations throughout); else the extension with weights of
    that precision."""
    if path == "blas":
        return dataclasses.replace(config, kernels=None)
    weights = usable_weights(path, config.on_cpu, config.kernels, config.kernel_status)
    return dataclasses.replace(config, cpu_weights=weights)


PATHS = ("blas", "float32", "float16", "bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="train_diffusion_unet_lowdim_workspace")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES[:2]))
    parser.add_argument(
        "--checkpoint",
        help="a trained policy (as eval.py takes it) instead of --config's random weights; the "
        "observations then come from its task's data",
    )
    parser.add_argument("--zarr", help="with --checkpoint: the dataset's zarr, if it moved")
    parser.add_argument("--paths", nargs=2, choices=PATHS, default=["blas", "float32"])
    args = parser.parse_args()
    config = accel.configure("cpu")
    if config.kernels is None:
        sys.exit(f"the CPU kernel is not in use: {config.kernel_status}")
    print(f"kernel: {config.kernel_status}", flush=True)
    compare_paths(
        args.config,
        "cpu",
        args.repeats,
        {path: accel_path(path_config(config, path)) for path in args.paths},
        tuple(args.cases),
        checkpoint=args.checkpoint,
        zarr_path=args.zarr,
    )


if __name__ == "__main__":
    main()
