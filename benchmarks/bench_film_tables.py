"""FiLM features computed ahead of the denoising loop (``ConditionalUnet1D.film_tables``) against
computing them in every step, in whole ``predict_action`` calls of a default policy, same
process, same weights and noise:

    python benchmarks/bench_film_tables.py                       # lowdim U-Net on the CPU
    python benchmarks/bench_film_tables.py --device gpu
    python benchmarks/bench_film_tables.py --config train_diffusion_unet_hybrid_workspace

Prints one JSON line per (scheduler steps, batch): median wall time of each path (the two
alternate call by call), their ratio and the largest difference between their actions.
"""

import argparse
import sys
from pathlib import Path

import diffusion_policy_mlx.accel as accel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_ab import CASES, compare_paths  # noqa: E402


def use_tables(on: bool):
    def use(policy) -> None:
        policy.precompute_film = on

    return use


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="train_diffusion_unet_lowdim_workspace")
    parser.add_argument("--device", default="cpu", help="cpu or gpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-b56", action="store_true", help="skip the batch-56 DDIM 16 call")
    args = parser.parse_args()
    accel.configure(args.device)
    compare_paths(
        args.config,
        args.device,
        args.repeats,
        {"per_step": use_tables(False), "tables": use_tables(True)},
        CASES[:2] if args.no_b56 else CASES,
    )


if __name__ == "__main__":
    main()
