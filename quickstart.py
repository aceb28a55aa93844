"""Train a small PushT policy that pushes the T, evaluate it, and say what the score means.

    python quickstart.py

About 10 minutes on a 2-core x86 CPU (less on a Mac or a GPU). It trains on upstream's recorded
demonstrations at ``data/pusht/pusht_cchi_v7_replay.zarr``, fetching them first when they are
not there (``--scripted-demos`` generates demonstrations offline with the scripted PushT expert
instead). The run is a plain ``train.py`` run of the U-Net lowdim workspace with the overrides
in :data:`RECIPE` (a 16x smaller U-Net, DDIM sampling, a higher learning rate), followed by
``eval.py`` on the paper's protocol: 50 test seeds, 300 steps each.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent
RECORDED = REPO / "data/pusht/pusht_cchi_v7_replay.zarr"
GENERATED = REPO / "data/pusht/pusht_expert_replay.zarr"
CONFIG = "train_diffusion_unet_lowdim_workspace"

# Hydra overrides on top of CONFIG, key -> value; a value of None deletes the key.
RECIPE: dict[str, str | None] = {
    # 4.2M parameters instead of 65.8M: about 0.25 s per step of 256 on two x86 cores
    "policy.model.down_dims": "[64,128,256]",
    "policy.model.diffusion_step_embed_dim": "64",
    # DDIM: 10 denoising steps per action chunk instead of DDPM's 100 (same training)
    "policy.noise_scheduler._target_": "diffusion_policy_mlx.schedulers.ddim.DDIMScheduler",
    "~policy.noise_scheduler.variance_type": None,
    "policy.num_inference_steps": "10",
    # a short cosine schedule learns faster with a larger step than upstream's 1e-4
    "optimizer.lr": "1.0e-3",
    "training.lr_warmup_steps": "100",
    "training.num_epochs": "50",
    # latest.ckpt only: without rollouts there is no score to rank top-k checkpoints by
    "checkpoint.topk.k": "0",
    "training.checkpoint_every": "10",
    "training.val_every": "10",
    "training.sample_every": "10",
    # the policy is evaluated by eval.py afterwards; the loop's own rollouts (at its first
    # epoch and then never) are one short episode without video
    "training.rollout_every": "1000",
    "task.env_runner.n_train": "0",
    "task.env_runner.n_train_vis": "0",
    "task.env_runner.n_test": "1",
    "task.env_runner.n_test_vis": "0",
    "task.env_runner.max_steps": "16",
    "logging.mode": "offline",
}
EVAL = {
    "task.env_runner.n_train": "0",
    "task.env_runner.n_train_vis": "0",
    "task.env_runner.n_test": "50",
    "task.env_runner.n_test_vis": "4",
    "task.env_runner.test_start_seed": "100000",
    "task.env_runner.max_steps": "300",
}


def recipe_overrides(recipe: dict[str, str | None]) -> list[str]:
    return [key if value is None else f"{key}={value}" for key, value in recipe.items()]


def run(cmd: list[str]) -> None:
    print("$", shlex.join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def data(args: argparse.Namespace) -> tuple[Path, str]:
    """The replay buffer to train on and where it came from, fetched or generated if need be."""
    if args.scripted_demos:
        zarr = (args.zarr or GENERATED).resolve()
        if not zarr.exists():
            run(
                [
                    sys.executable,
                    "-m",
                    "diffusion_policy_mlx.env.pusht.generate_demos",
                    "--episodes",
                    str(args.episodes),
                    "-o",
                    str(zarr),
                ]
            )
        return zarr, "demonstrations from the scripted expert"
    if args.zarr is not None:
        if not args.zarr.exists():
            sys.exit(
                f"quickstart: --zarr {args.zarr} does not exist; give a PushT replay buffer, or "
                "add --scripted-demos to generate demonstrations there."
            )
        return args.zarr.resolve(), "your replay buffer"
    if not RECORDED.exists():
        cmd = [sys.executable, "-m", "diffusion_policy_mlx.data", "download", "pusht"]
        print("$", shlex.join(cmd), flush=True)
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            sys.exit(
                "quickstart: could not fetch the PushT demonstrations (see above); place them by "
                "hand, or run `python quickstart.py --scripted-demos` to train on demonstrations "
                "generated offline."
            )
    return RECORDED, "upstream's recorded demonstrations"


def test_scores(log: dict) -> list[float]:
    """Each test seed's score (its episode's best reward) in ``eval.py``'s ``eval_log.json``."""
    return [v for k, v in log.items() if k.startswith("test/sim_max_reward_")]


def explain(scores: list[float]) -> str:
    solved = sum(s > 0.95 for s in scores)
    return (
        f"test/mean_score {statistics.mean(scores):.3f} over {len(scores)} test seeds "
        f"(median {statistics.median(scores):.3f}, {solved} of {len(scores)} above 0.95).\n"
        "Each seed's score is the best fraction of the green target the T covered during the "
        "episode (coverage / 0.95, capped at 1): 0 means the T was never moved onto the target "
        "(a T left where it starts scores about 0.09), 1 means fully covered. The paper's "
        "U-Net policies, trained for thousands of epochs on a GPU, score 0.91-0.95 (keypoint "
        "observations) and 0.84-0.91 (images); this one trained for minutes."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--zarr", type=Path, help="train on this PushT replay buffer instead (lowdim layout)"
    )
    parser.add_argument(
        "--scripted-demos",
        action="store_true",
        help="train on demonstrations generated offline by the scripted expert (no download)",
    )
    parser.add_argument(
        "--episodes", type=int, default=100, help="scripted demonstrations to generate"
    )
    parser.add_argument(
        "--n-test", type=int, default=50, help="test seeds to evaluate on (the paper's: 50)"
    )
    parser.add_argument(
        "--output", type=Path, default=REPO / "outputs/quickstart", help="folder for the run"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="more train.py overrides, e.g. training.num_epochs=100 training.device=cpu",
    )
    args = parser.parse_args()
    if args.n_test < 1:
        parser.error(f"--n-test {args.n_test}: give at least one test seed")
    extra = dict(o.split("=", 1) if "=" in o else (o, None) for o in args.overrides)

    import mlx.core as mx

    # the MLX GPU where there is one (Metal, CUDA), without a warning where there is none
    device = extra.pop("training.device", None) or ("gpu" if mx.is_available(mx.gpu) else "cpu")
    zarr, source = data(args)
    print(f"Training on {source}: {zarr}", flush=True)
    run_dir = args.output.resolve() / datetime.now().strftime("%Y.%m.%d-%H.%M.%S")
    recipe = RECIPE | {
        "training.device": device,
        "task.dataset.zarr_path": str(zarr),
        "hydra.run.dir": str(run_dir),
    }
    run([sys.executable, "train.py", f"--config-name={CONFIG}", *recipe_overrides(recipe | extra)])

    checkpoint = run_dir / "checkpoints" / "latest.ckpt"
    eval_dir = run_dir / "eval"
    protocol = EVAL | {
        "task.env_runner.n_test": str(args.n_test),
        "task.env_runner.n_test_vis": str(
            min(args.n_test, int(EVAL["task.env_runner.n_test_vis"]))
        ),
    }
    evaluate = [sys.executable, "eval.py", "-c", str(checkpoint), "-o", str(eval_dir), "-d", device]
    run(evaluate + recipe_overrides(protocol))

    log = json.loads((eval_dir / "eval_log.json").read_text())
    scores = test_scores(log)
    videos = sorted(v for k, v in log.items() if k.startswith("test/sim_video_"))
    print()
    print(explain(scores))
    print()
    print(f"data:        {zarr}")
    print(f"checkpoint:  {checkpoint}")
    print(f"train logs:  {run_dir / 'logs.json.txt'}")
    print(f"eval log:    {eval_dir / 'eval_log.json'}")
    print(f"videos:      {', '.join(videos) if videos else eval_dir / 'media'}")
    print(f"again:       python eval.py -c {checkpoint} -o OUT")


if __name__ == "__main__":
    main()
