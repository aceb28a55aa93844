"""Train upstream's PushT lowdim U-Net (PyTorch) and ours (MLX) side by side on one GPU, then roll
every checkpoint of both out in this package's simulator, on the paper's protocol.

Both sides run their own ``train.py`` on the same config (``train_diffusion_unet_lowdim_workspace``,
``task=pusht_lowdim``), the same seeds and an ``--epochs`` cosine schedule, and keep a checkpoint
every ``--every`` epochs (their top-k manager, monitoring ``epoch``). Upstream's checkpoints are
converted with ``diffusion_policy_mlx.scripts.import_upstream``; every checkpoint of both sides is
then evaluated with ``eval.py``'s code path: EMA weights, 50 test seeds from 100000. Validation
losses come from each side's ``logs.json.txt``.

Commands (all idempotent, so a run cut short by a time limit continues where it stopped):

    drive   start the trainings and the evaluators (as their own process sessions, so they
            outlive this command) unless already running or done; then report progress until
            everything is evaluated or ``--deadline`` seconds have passed; copy the logs and
            results to ``--out``
    report  print the table (epoch x side: test score, validation loss) and draw the curves from
            what ``drive`` copied out

On the offline GPU machine (see ../shared/device/README.md and benchmarks/README.md):

    source .device/setup.sh
    python3 benchmarks/train_side_by_side.py drive --root /root/sbs --out $OUT --deadline 560

The upstream side needs upstream's checkout (``upstream/``, or ``DP_UPSTREAM_PATH``) and, on
``--upstream-path-prefix``, its pinned packages (zarr 2, numcodecs < 0.16, dill, diffusers 0.11.1,
huggingface_hub 0.25.2) ahead of ours.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = "train_diffusion_unet_lowdim_workspace"
SIDES = ("ours", "upstream")
# The paper's protocol (and the shipped task config): 50 test seeds from 100000, 6 train seeds,
# 300 steps; EMA weights are what eval.py rolls out. Videos off.
PAPER_EVAL = [
    "task.env_runner.n_train=6",
    "task.env_runner.n_test=50",
    "task.env_runner.test_start_seed=100000",
    "task.env_runner.train_start_seed=0",
    "task.env_runner.max_steps=300",
    "task.env_runner.n_train_vis=0",
    "task.env_runner.n_test_vis=0",
]


@dataclass(frozen=True)
class Run:
    side: str
    seed: int
    root: Path

    @property
    def name(self) -> str:
        return f"{self.side}_seed{self.seed}"

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def pid_file(self) -> Path:
        return self.dir / "train.pid"

    @property
    def done_file(self) -> Path:
        return self.dir / "train.done"


def training_overrides(run: Run, epochs: int, every: int, zarr: str) -> list[str]:
    """The Hydra overrides both sides share: schedule, seed, a checkpoint per ``every`` epochs
    kept by the top-k manager (monitoring ``epoch``), no rollouts during training."""
    return [
        f"training.seed={run.seed}",
        f"training.num_epochs={epochs}",
        f"training.checkpoint_every={every}",
        # rollouts happen afterwards, from the checkpoints, for both sides alike
        f"training.rollout_every={10 * epochs}",
        "checkpoint.topk.monitor_key=epoch",
        "checkpoint.topk.mode=max",
        f"checkpoint.topk.k={epochs // every + 1}",
        "checkpoint.topk.format_str='epoch={epoch:04d}.ckpt'",
        "logging.mode=offline",
        f"hydra.run.dir={run.dir}",
        f"task.dataset.zarr_path={zarr}",
        # the epoch-0 rollout both loops make (epoch 0 % rollout_every == 0): one short episode
        # each, no videos; evaluation restores the paper's protocol (PAPER_EVAL)
        "task.env_runner.n_train=1",
        "task.env_runner.n_test=1",
        "task.env_runner.n_train_vis=0",
        "task.env_runner.n_test_vis=0",
        "task.env_runner.max_steps=8",
    ]


def training_command(run: Run, args: argparse.Namespace) -> list[str]:
    overrides = training_overrides(run, args.epochs, args.every, args.zarr) + args.overrides
    if run.side == "ours":
        return [sys.executable, str(REPO / "train.py"), f"--config-name={CONFIG}", *overrides]
    return [
        sys.executable,
        str(REPO / "benchmarks" / "side_by_side_upstream.py"),
        f"--config-name={CONFIG}",
        *overrides,
        f"training.device={args.upstream_device}",
    ]


def alive(pid_file: Path) -> bool:
    if not pid_file.is_file():
        return False
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (ProcessLookupError, ValueError):
        return False
    return True


def start_session(command: list[str], log_path: Path, pid_file: Path, env: dict) -> None:
    """Start ``command`` as its own process session; a shell wrapper marks a clean exit."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    quoted = shlex.join(command)
    done = pid_file.with_suffix(".done")
    script = f"{quoted} && touch {shlex.quote(str(done))}"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            ["bash", "-c", script],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))


def side_env(side: str, upstream_prefix: str) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline")
    standins = str(REPO / "benchmarks" / "standins")
    path = env.get("PYTHONPATH", "")
    if side == "upstream":
        env["PYTHONPATH"] = ":".join(p for p in (upstream_prefix, standins, path) if p)
    else:
        env["PYTHONPATH"] = ":".join(p for p in (standins, path) if p)
    return env


def last_epoch(run: Run) -> int | None:
    """The last epoch a side logged (both write one JSON line per step with ``epoch``)."""
    log = run.dir / "logs.json.txt"
    if not log.is_file():
        return None
    with open(log, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4096))
        lines = f.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        try:
            return int(json.loads(line)["epoch"])
        except (ValueError, KeyError):
            continue
    return None


def snapshots(run: Run) -> dict[int, Path]:
    """``epoch=NNNN.ckpt`` files, only once completely written (upstream writes in a thread;
    a torch zip is complete once its central directory can be read)."""
    found = {}
    for path in sorted((run.dir / "checkpoints").glob("epoch=*.ckpt")):
        epoch = int(path.stem.split("=")[1])
        if run.side == "upstream":
            if time.time() - path.stat().st_mtime < 5 or not zipfile.is_zipfile(path):
                continue
        found[epoch] = path
    return found


def read_dropped(root: Path) -> set[int]:
    path = root / "dropped.json"
    return set(json.loads(path.read_text())) if path.is_file() else set()


def read_results(path: Path) -> dict[tuple[str, int, int], dict]:
    results = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            results[(r["side"], r["seed"], r["epoch"])] = r
    return results


def evaluate_loop(args: argparse.Namespace) -> None:
    """One evaluator: claim un-evaluated snapshots (an atomic mkdir each) until every expected
    epoch of every run is done."""
    sys.path.insert(0, str(REPO))
    import eval as eval_script  # the repository's eval.py: the user's code path

    root = Path(args.root)
    results_path = root / "results.jsonl"
    runs = [Run(side, seed, root) for side in args.sides for seed in args.seeds]
    expected = {
        (r.side, r.seed, e) for r in runs for e in range(args.every, args.epochs, args.every)
    }
    while True:
        results = read_results(results_path)
        dropped = read_dropped(root)
        todo = {k for k in expected if k not in results and k[1] not in dropped}
        if not todo:
            return
        claimed = None
        for run in runs:
            for epoch, path in snapshots(run).items():
                key = (run.side, run.seed, epoch)
                if key not in todo:
                    continue
                try:
                    (root / "claims" / f"{run.name}_{epoch:04d}").mkdir(parents=True)
                except FileExistsError:
                    continue
                claimed = (run, epoch, path)
                break
            if claimed:
                break
        if claimed is None:
            time.sleep(5)
            continue
        run, epoch, path = claimed
        started = time.perf_counter()
        if run.side == "upstream":
            converted = root / "imported" / f"{run.name}_{epoch:04d}.ckpt"
            converted.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "diffusion_policy_mlx.scripts.import_upstream",
                    str(path),
                    "-o",
                    str(converted),
                ],
                check=True,
                cwd=REPO,
            )
            path = converted
        out_dir = root / "eval" / f"{run.name}_{epoch:04d}"
        log = eval_script.main(
            [
                "-c",
                str(path),
                "-o",
                str(out_dir),
                "-d",
                args.device,
                "--overwrite",
                *PAPER_EVAL,
                *args.eval_overrides,
            ]
        )
        record = {
            "side": run.side,
            "seed": run.seed,
            "epoch": epoch,
            "test_mean_score": log["test/mean_score"],
            "train_mean_score": log.get("train/mean_score"),
            "eval_s": round(time.perf_counter() - started, 1),
        }
        with open(results_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)


def drop_seed(root: Path, runs: list[Run], seed: int) -> None:
    """Stop both sides of one seed (kept as a pair so the comparison stays like for like)."""
    for run in runs:
        if run.seed == seed and alive(run.pid_file):
            os.killpg(int(run.pid_file.read_text()), signal.SIGTERM)
    dropped_path = root / "dropped.json"
    dropped = json.loads(dropped_path.read_text()) if dropped_path.is_file() else []
    dropped_path.write_text(json.dumps(sorted(set(dropped) | {seed})))


def drive(args: argparse.Namespace) -> None:
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    runs = [Run(side, seed, root) for side in args.sides for seed in args.seeds]
    state_path = root / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    dropped = read_dropped(root)
    for run in runs:
        if run.seed in dropped or run.done_file.is_file() or alive(run.pid_file):
            continue
        if run.pid_file.is_file():
            # started before and exited without finishing: say why rather than start it again
            tail = (run.dir / "train.out").read_text(errors="replace").splitlines()[-15:]
            print(f"{run.name} FAILED:\n" + "\n".join(tail), flush=True)
            continue
        run.dir.mkdir(parents=True, exist_ok=True)
        start_session(
            training_command(run, args),
            run.dir / "train.out",
            run.pid_file,
            side_env(run.side, args.upstream_path_prefix),
        )
        state.setdefault("started", {})[run.name] = time.time()
        print(f"started {run.name}", flush=True)
    for i in range(args.evaluators):
        pid_file = root / f"evaluator{i}.pid"
        if not alive(pid_file) and not (root / f"evaluator{i}.done").is_file():
            command = [
                sys.executable,
                __file__,
                "evaluate",
                "--root",
                str(root),
                "--device",
                args.device,
                "--epochs",
                str(args.epochs),
                "--every",
                str(args.every),
                "--seeds",
                *map(str, args.seeds),
                "--sides",
                *args.sides,
                "--eval-overrides",
                *args.eval_overrides,
            ]
            start_session(command, root / f"evaluator{i}.out", pid_file, side_env("ours", ""))
    state_path.write_text(json.dumps(state))

    began = time.monotonic()
    expected = len(runs) * len(range(args.every, args.epochs, args.every))
    while True:
        results = read_results(root / "results.jsonl")
        dropped = read_dropped(root)
        progress = {r.name: last_epoch(r) for r in runs}
        now = time.time()
        rates = {}
        for run in runs:
            started = state.get("started", {}).get(run.name)
            if started and progress[run.name]:
                rates[run.name] = progress[run.name] / (now - started)
        print(
            f"[{time.monotonic() - began:5.0f}s] epochs {progress}  evaluated {len(results)}/{expected}"
            f"  epochs/min { {k: round(60 * v, 1) for k, v in rates.items()} }",
            flush=True,
        )
        # Projected to overrun the training budget: keep the first seed's pair, drop the last.
        if args.train_budget and len(set(args.seeds) - dropped) > 1 and len(rates) == len(runs):
            slowest = min(rates.values())
            elapsed = now - min(state["started"].values())
            if elapsed > 120 and args.epochs / slowest > args.train_budget:
                last = max(set(args.seeds) - dropped)
                print(
                    f"projected {args.epochs / slowest:.0f}s > budget {args.train_budget}s: dropping seed {last}",
                    flush=True,
                )
                drop_seed(root, runs, last)
        remaining = [k for k in runs if k.seed not in dropped]
        if len([r for r in results.values() if r["seed"] not in dropped]) >= len(remaining) * len(
            range(args.every, args.epochs, args.every)
        ):
            break
        if time.monotonic() - began > args.deadline:
            break
        time.sleep(args.poll)
    copy_out(root, runs, Path(args.out))


def copy_out(root: Path, runs: list[Run], out: Path) -> None:
    """Logs (validation loss) and results to ``out``, as one small JSON file."""
    out.mkdir(parents=True, exist_ok=True)
    bundle = {"results": list(read_results(root / "results.jsonl").values()), "logs": {}}
    for run in runs:
        log = run.dir / "logs.json.txt"
        if log.is_file():
            lines = []
            for line in log.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if "val_loss" in record or "train_loss" in record:
                    lines.append(
                        {
                            k: record[k]
                            for k in ("epoch", "global_step", "val_loss", "train_loss")
                            if k in record
                        }
                    )
            bundle["logs"][run.name] = lines
    (out / "side_by_side.json").write_text(json.dumps(bundle))


def report(bundle_path: Path, plot_path: Path) -> None:
    """Print epoch x side (test score, validation loss) and plot both curves."""
    bundle = json.loads(bundle_path.read_text())
    val = {}  # (side, seed, epoch) -> validation loss logged at that epoch
    for name, lines in bundle["logs"].items():
        side, seed = name.rsplit("_seed", 1)
        for line in lines:
            if "val_loss" in line:
                val[(side, int(seed), int(line["epoch"]))] = line["val_loss"]
    rows: dict[tuple[str, int], list[dict]] = {}
    for r in bundle["results"]:
        rows.setdefault((r["side"], r["epoch"]), []).append(r)
    epochs = sorted({e for _, e in rows})
    print(
        "| epoch | ours: test score | upstream: test score | ours: val loss | upstream: val loss |"
    )
    print("| ---: | ---: | ---: | ---: | ---: |")
    series: dict[str, list[tuple[int, float, float]]] = {side: [] for side in SIDES}
    for epoch in epochs:
        cells = []
        for side in SIDES:
            scores = [r["test_mean_score"] for r in rows.get((side, epoch), [])]
            cells.append(" / ".join(f"{x:.3f}" for x in scores) or "-")
        for side in SIDES:
            losses = [v for (s, _, e), v in val.items() if s == side and e == epoch]
            cells.append(" / ".join(f"{x:.4f}" for x in losses) or "-")
            scores = [r["test_mean_score"] for r in rows.get((side, epoch), [])]
            if scores and losses:
                series[side].append((epoch, sum(scores) / len(scores), sum(losses) / len(losses)))
        print(f"| {epoch} | " + " | ".join(cells) + " |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_score, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for side, points in series.items():
        if points:
            e, score, loss = zip(*points, strict=True)
            ax_score.plot(e, score, marker="o", label=side)
            ax_loss.plot(e, loss, marker="o", label=side)
    ax_score.set(xlabel="epoch", ylabel="test mean score (50 seeds)", title="rollout score")
    ax_loss.set(xlabel="epoch", ylabel="validation loss", title="validation loss")
    ax_score.legend()
    fig.tight_layout()
    fig.savefig(plot_path, dpi=100)
    print(f"plot: {plot_path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("drive", "evaluate", "report"))
    parser.add_argument("--root", default="outputs/side_by_side")
    parser.add_argument("--out", default="outputs/side_by_side/out")
    parser.add_argument(
        "--zarr",
        default=str(REPO / "data" / "pusht" / "pusht_cchi_v7_replay.zarr"),
        help="PushT data (the lowdim task reads keypoint, state, action and episode ends)",
    )
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--device", default="gpu")
    parser.add_argument("--evaluators", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=560, help="seconds drive keeps watching")
    parser.add_argument("--poll", type=float, default=30)
    parser.add_argument(
        "--train-budget",
        type=float,
        default=0,
        help="seconds the trainings may take; if the slowest run is projected past it, the last seed pair is dropped",
    )
    parser.add_argument("--upstream-path-prefix", default=os.environ.get("DP_UPSTREAM_SITE", ""))
    parser.add_argument("--upstream-device", default="cuda:0")
    parser.add_argument(
        "--overrides", nargs="*", default=[], help="more Hydra overrides for both trainings"
    )
    parser.add_argument(
        "--eval-overrides", nargs="*", default=[], help="more eval.py overrides (key=value)"
    )
    parser.add_argument("--bundle", help="report: the side_by_side.json that drive wrote")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "drive":
        drive(args)
    elif args.command == "evaluate":
        evaluate_loop(args)
    else:
        report(Path(args.bundle), Path(args.bundle).with_suffix(".png"))


if __name__ == "__main__":
    main()
