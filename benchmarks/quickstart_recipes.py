"""Learning curves of candidate quickstart recipes: which small PushT policy scores highest for
the training time a 2-core CPU has in the quickstart's 15 minutes.

The score a recipe reaches after N optimizer steps does not depend on the machine, so the
curves can be taken on a fast one (the GPU machine) and read against a CPU's time per step
(``bench_train_step.py``). Every recipe is ``quickstart.py``'s own (:data:`quickstart.RECIPE`)
with some keys changed; each trains with ``train.py`` in its own process session and rolls out
on the paper's test protocol (50 seeds from 100000, 300 steps) every ``--every`` epochs.

    python benchmarks/quickstart_recipes.py drive --root /tmp/qs --out OUT --device gpu
    python benchmarks/quickstart_recipes.py report OUT/quickstart_recipes.json

``drive`` is idempotent: it starts what is neither running nor done, then reports until
everything is done or ``--deadline`` seconds have passed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from train_side_by_side import alive, start_session  # noqa: E402

from quickstart import CONFIG, EVAL, RECIPE, recipe_overrides, test_scores  # noqa: E402

NO_VIDEO_EVAL = EVAL | {"task.env_runner.n_test_vis": "0"}

# name -> keys that differ from quickstart.RECIPE. Each variant's epochs are chosen to take about
# as long on a 2-core x86 CPU as the recipe's 50 (0.25 s per step of 256 for the recipe's U-Net,
# 0.16 s per step of 128, 0.11 s for the narrow one, 0.75 s for the wide one: bench_train_step.py).
VARIANTS: dict[str, dict[str, str]] = {
    "base": {},
    # how much the score moves with the seed alone
    "seed43": {"training.seed": "43"},
    "seed44": {"training.seed": "44"},
    "lr3e-4": {"optimizer.lr": "3.0e-4"},
    "lr3e-3": {"optimizer.lr": "3.0e-3"},
    "narrow": {
        "policy.model.down_dims": "[32,64,128]",
        "policy.model.diffusion_step_embed_dim": "32",
        "training.num_epochs": "100",
        "training.rollout_every": "10",
    },
    "wide": {
        "policy.model.down_dims": "[128,256,512]",
        "policy.model.diffusion_step_embed_dim": "128",
        "training.num_epochs": "16",
        "training.rollout_every": "3",
    },
    "batch128": {"dataloader.batch_size": "128", "training.num_epochs": "40"},
    "all_episodes": {
        "task.dataset.max_train_episodes": "null",
        "training.num_epochs": "21",
        "training.rollout_every": "3",
    },
    # what twice the time buys
    "long": {"training.num_epochs": "100", "training.rollout_every": "10"},
}


def run_overrides(name: str, root: Path, every: int, zarr: str, device: str) -> list[str]:
    # the in-training rollouts follow the quickstart's evaluation protocol, without videos
    recipe = (
        RECIPE
        | NO_VIDEO_EVAL
        | {
            "training.rollout_every": str(every),
            "training.checkpoint_every": str(10_000),
            "training.device": device,
            "task.dataset.zarr_path": zarr,
            "hydra.run.dir": str(root / name),
            "logging.mode": "offline",
        }
    )
    return recipe_overrides(recipe | VARIANTS[name])


def curve(run_dir: Path) -> list[dict]:
    logs = run_dir / "logs.json.txt"
    if not logs.is_file():
        return []
    rows = []
    for line in logs.read_text().splitlines():
        entry = json.loads(line)
        if "test/mean_score" in entry:
            rows.append(
                {
                    "epoch": entry["epoch"],
                    "global_step": entry["global_step"],
                    "test_mean_score": entry["test/mean_score"],
                    "val_loss": entry.get("val_loss"),
                }
            )
    return rows


def final(run_dir: Path) -> dict | None:
    """``eval.py``'s score of the last checkpoint, on the quickstart's protocol."""
    path = run_dir / "eval" / "eval_log.json"
    if not path.is_file():
        return None
    log = json.loads(path.read_text())
    return {"test_mean_score": log["test/mean_score"], "n_test": len(test_scores(log))}


def drive(args: argparse.Namespace) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "benchmarks" / "standins"), env.get("PYTHONPATH", "")) if p
    )
    for name in args.variants:
        run_dir = args.root / name
        pid = run_dir.parent / f"{name}.pid"
        if alive(pid) or pid.with_suffix(".done").exists():
            continue
        overrides = run_overrides(name, args.root, args.every, args.zarr, args.device)
        train = [sys.executable, str(REPO / "train.py"), f"--config-name={CONFIG}", *overrides]
        # the last epoch is rarely a rollout epoch: eval.py scores the final policy as the
        # quickstart does
        evaluate = [
            sys.executable,
            str(REPO / "eval.py"),
            "-c",
            str(run_dir / "checkpoints" / "latest.ckpt"),
            "-o",
            str(run_dir / "eval"),
            "-d",
            args.device,
            *recipe_overrides(NO_VIDEO_EVAL),
        ]
        cmd = ["bash", "-c", f"{shlex.join(train)} && {shlex.join(evaluate)}"]
        start_session(cmd, args.root / f"{name}.log", pid, env)
        print(f"started {name}", flush=True)
    start = time.monotonic()
    while True:
        done = [(args.root / f"{n}.done").exists() for n in args.variants]
        running = [alive(args.root / f"{n}.pid") for n in args.variants]
        if all(done) or not any(running) or time.monotonic() - start > args.deadline:
            break
        time.sleep(args.poll)
    bundle = {
        "recipe": RECIPE,
        "variants": {
            n: {
                "changes": VARIANTS[n],
                "done": (args.root / f"{n}.done").exists(),
                "curve": curve(args.root / n),
                "final": final(args.root / n),
            }
            for n in args.variants
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quickstart_recipes.json").write_text(json.dumps(bundle, indent=2))
    for n in args.variants:
        log = args.root / f"{n}.log"
        if log.is_file():
            (args.out / f"{n}.log.tail").write_text("\n".join(log.read_text().splitlines()[-30:]))
    report(args.out / "quickstart_recipes.json")


def report(bundle_path: Path) -> None:
    bundle = json.loads(Path(bundle_path).read_text())
    print("| variant | changes | epoch | optimizer steps | test/mean_score | val_loss |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, v in bundle["variants"].items():
        changes = ", ".join(f"{k}={x}" for k, x in v["changes"].items()) or "-"
        for row in v["curve"]:
            val = "-" if row["val_loss"] is None else f"{row['val_loss']:.4f}"
            print(
                f"| {name} | {changes} | {row['epoch']} | {row['global_step']} "
                f"| {row['test_mean_score']:.3f} | {val} |"
            )
        if v["final"] is not None:
            print(
                f"| {name} | {changes} | last (eval.py) | | "
                f"**{v['final']['test_mean_score']:.3f}** | |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("drive")
    d.add_argument("--root", type=Path, required=True)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--zarr", default=str(REPO / "data/pusht/pusht_cchi_v7_replay.zarr"))
    d.add_argument("--device", default="gpu")
    d.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    d.add_argument("--every", type=int, default=5, help="epochs between rollouts")
    d.add_argument("--deadline", type=float, default=540)
    d.add_argument("--poll", type=float, default=15)
    r = sub.add_parser("report")
    r.add_argument("bundle", type=Path)
    args = parser.parse_args()
    if args.command == "drive":
        drive(args)
    else:
        report(args.bundle)


if __name__ == "__main__":
    main()
