"""Convert a checkpoint of real-stanford/diffusion_policy into a diffusion_policy_mlx checkpoint.

    python -m diffusion_policy_mlx.scripts.import_upstream epoch=0550-test_mean_score=0.969.ckpt \\
        -o outputs/imported/checkpoints/latest.ckpt
    python eval.py -c outputs/imported/checkpoints/latest.ckpt -o outputs/imported_eval

The file is read without running its pickle and without torch; a checkpoint whose pickle asks
for anything beyond tensors, containers and config data is refused.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import diffusion_policy_mlx.accel  # noqa: F401  (before mlx.core: loads the fast BLAS)

from diffusion_policy_mlx.common.checkpoint_util import CheckpointError
from diffusion_policy_mlx.config_compat import ConfigError
from diffusion_policy_mlx.workspace.upstream_checkpoint import import_upstream_checkpoint


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="an upstream .ckpt (torch.save of a workspace)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the .ckpt to write")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the output file if it exists"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[%(levelname)s] %(message)s")
    if args.output.exists() and not args.overwrite:
        sys.exit(f"import_upstream: {args.output} exists; pass --overwrite or another -o")
    try:
        result = import_upstream_checkpoint(args.src, args.output)
    except (CheckpointError, ConfigError) as e:
        sys.exit(f"import_upstream: {e}")
    workspace = result.workspace
    print(
        f"imported {args.src} -> {result.path}\n"
        f"workspace: {type(workspace).__name__}, epoch {workspace.epoch}, "
        f"global step {workspace.global_step}"
    )
    for note in result.notes:
        print(note)
    return result.path


if __name__ == "__main__":
    main()
