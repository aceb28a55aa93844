"""Roll out a trained policy from a checkpoint and write ``eval_log.json`` and videos.

    python eval.py -c outputs/.../checkpoints/latest.ckpt -o outputs/eval_pusht
    python eval.py -c latest.ckpt -o eval_out task.env_runner.n_test=10   # config overrides

The workspace is rebuilt from the config stored in the checkpoint; the EMA policy is rolled
out when the run trained one (``training.use_ema``), as upstream does. A checkpoint is data: its
config (with the overrides) may build only this package's classes, unless you trust more module
prefixes with ``trusted_targets=[my_pkg]`` or ``DP_MLX_TRUSTED_TARGETS=my_pkg``.
"""

import argparse
import copy
import json
import logging
import sys
from pathlib import Path

import diffusion_policy_mlx.accel as accel

import hydra
from omegaconf import open_dict

from diffusion_policy_mlx import config_trust
from diffusion_policy_mlx.common.checkpoint_util import load_checkpoint
from diffusion_policy_mlx.workspace.base_workspace import BaseWorkspace


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--checkpoint", required=True, help="a .ckpt written by train.py")
    parser.add_argument(
        "-o", "--output_dir", required=True, help="where eval_log.json and media/ go"
    )
    parser.add_argument(
        "-d", "--device", default="cuda:0", help="cuda:0, mps or gpu (the MLX GPU), or cpu"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="write into an existing, non-empty output_dir"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="key=value changes to the stored config, e.g. task.env_runner.n_test=5; "
        "trusted_targets=[my_pkg] lets the config build targets under module prefix my_pkg",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    output_dir = Path(args.output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not args.overwrite:
        if not sys.stdin.isatty():
            sys.exit(f"eval.py: {output_dir} exists and is not empty; pass --overwrite or a new -o")
        if input(f"Output path {output_dir} already exists! Overwrite? [y/N] ").lower() != "y":
            sys.exit("aborted")

    overrides, trusted = config_trust.split_trusted_overrides(args.overrides)
    ckpt = load_checkpoint(args.checkpoint)
    # a copy: load_payload compares the stored config with the effective one
    cfg = copy.deepcopy(ckpt.cfg)
    with open_dict(cfg):
        cfg.training.device = args.device
        cfg.merge_with_dotlist(overrides)
    cls = config_trust.workspace_class(cfg, ckpt.path, trusted)
    if not issubclass(cls, BaseWorkspace):
        sys.exit(f"eval.py: {ckpt.path} names {cls.__name__}, which is not a workspace")
    output_dir.mkdir(parents=True, exist_ok=True)
    accel.configure(cfg.training.device, cfg.get("accel"))
    workspace: BaseWorkspace = cls(cfg, output_dir=output_dir)
    workspace.load_payload(ckpt)
    workspace.accelerate(accel.apply)

    policy = workspace.ema_model if cfg.training.use_ema else workspace.model
    policy.eval()
    # the workspace's copy, whose upstream target names are translated
    env_runner = hydra.utils.instantiate(workspace.cfg.task.env_runner, output_dir=str(output_dir))
    runner_log = env_runner.run(policy)

    # Videos arrive as mp4 paths; every other entry is a number.
    json_log = {k: v if isinstance(v, str) else float(v) for k, v in runner_log.items()}
    out_path = output_dir / "eval_log.json"
    out_path.write_text(json.dumps(json_log, indent=2, sort_keys=True))
    videos = sorted(v for v in json_log.values() if isinstance(v, str) and v.endswith(".mp4"))
    scores = {k: v for k, v in json_log.items() if k.endswith("mean_score")}
    epoch = ckpt.finished_epoch
    trained = "untrained" if epoch is None else f"epoch {epoch}"
    print(f"checkpoint: {ckpt.path} ({trained}, {ckpt.state['global_step']} training steps)")
    print(f"policy: {'EMA' if cfg.training.use_ema else 'trained'} weights; scores: {scores}")
    print(f"eval log: {out_path}")
    if videos:
        print(f"videos ({len(videos)}): {Path(videos[0]).parent}")
    return json_log


if __name__ == "__main__":
    main()
