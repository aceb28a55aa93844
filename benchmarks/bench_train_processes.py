"""One training step of ours and of upstream, each side alone in its own process, the processes
alternating: a check on ``bench_policy.py``'s in-process interleaving for the training step.

    python benchmarks/bench_train_processes.py                  # lowdim, batch 256, CPU
    python benchmarks/bench_train_processes.py --policy hybrid --rounds 2

``bench_policy.py`` alternates the two sides call by call in one process, so that a shared
machine's drifting speed hits both alike; but then both share one ``malloc`` heap, one set of
caches and two thread pools, and on the 2-core CPU our training step ran about 10 % slower
that way (4.0 s) than alone (3.6 s). Here each of ``--rounds`` rounds starts one process per
side, upstream's first, and each process times ``--steps`` steps after two warm-up steps (the
same synthetic batch and weights as ``bench_policy.py``). Prints each process's median and the
ratio of the medians over all rounds (upstream / ours; > 1: ours is faster).

``--against-env VAR=VALUE`` runs ours twice instead, once with that environment variable, for
settings read at process start (``DP_MLX_MALLOC=system``: ``python
benchmarks/bench_train_processes.py --policy hybrid --against-env DP_MLX_MALLOC=system``).
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import diffusion_policy_mlx.accel  # noqa: F401  (loads the fast BLAS)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sides import (  # noqa: E402
    SPECS,
    OursSide,
    UpstreamSide,
    import_upstream,
    synthetic_batch,
)


def time_side(args: argparse.Namespace) -> None:
    """Inside a child process: print this side's step times in seconds, one line."""
    spec = SPECS[args.policy]
    if args.side == "upstream":
        upstream_path = Path(args.upstream).expanduser().resolve()
        import_upstream(upstream_path)
        import torch

        if args.device == "cpu":
            torch.set_num_threads(args.threads)
        side = UpstreamSide(spec, upstream_path, args.device)
    else:
        side = OursSide(spec, args.device)
    batch = synthetic_batch(side.cfg, args.batch or int(side.cfg.dataloader.batch_size), seed=1)
    side.fit_normalizer(batch)
    if args.side == "upstream":
        side.build_training()
    step = side.train_step(batch)
    times = []
    for i in range(args.steps + 2):
        start = time.perf_counter()
        step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    print(" ".join(f"{t:.4f}" for t in times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", choices=sorted(SPECS), default="lowdim")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--batch", type=int, default=None, help="default: the config's batch size")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=6, help="timed steps per process")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--upstream",
        default=os.environ.get("DP_UPSTREAM_PATH"),
        help="upstream diffusion_policy checkout (default: $DP_UPSTREAM_PATH)",
    )
    p.add_argument(
        "--against-env",
        metavar="VAR=VALUE",
        default=None,
        help="instead of upstream, compare ours with ours under this environment variable "
        "(e.g. DP_MLX_MALLOC=system): a process-level setting's A/B",
    )
    p.add_argument("--side", choices=["ours", "upstream"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side is not None:
        time_side(args)
        return
    # (label, side, extra environment); the first is the baseline of the ratio
    if args.against_env is not None:
        var, sep, value = args.against_env.partition("=")
        if not sep or not var:
            p.error(f"--against-env {args.against_env!r}: give VAR=VALUE")
        runs = [(args.against_env, "ours", {var: value}), ("ours", "ours", {})]
    elif args.upstream is None:
        p.error("give --upstream or set DP_UPSTREAM_PATH (or compare settings with --against-env)")
    else:
        runs = [("upstream", "upstream", {}), ("ours", "ours", {})]

    # torch's OpenMP workers sleep between regions, as in bench_policy.py
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    child = [sys.executable, "-W", "ignore", __file__, *sys.argv[1:]]
    times: dict[str, list[float]] = {label: [] for label, _, _ in runs}
    for round_ in range(args.rounds):
        for label, side, extra in runs:
            out = subprocess.run(
                [*child, "--side", side],
                env={**env, **extra},
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            steps = [float(t) for t in out.strip().splitlines()[-1].split()]
            times[label].extend(steps)
            median_ms = 1e3 * statistics.median(steps)
            print(f"round {round_ + 1} {label}: median {median_ms:.1f} ms", flush=True)
    medians = {label: statistics.median(t) for label, t in times.items()}
    baseline, ours = (label for label, _, _ in runs)
    print(
        f"{args.policy} train step on {args.device}, {args.rounds} rounds x {args.steps} steps: "
        f"{ours} {1e3 * medians[ours]:.1f} ms, {baseline} {1e3 * medians[baseline]:.1f} ms, "
        f"{baseline} / {ours} {medians[baseline] / medians[ours]:.2f}x"
    )


if __name__ == "__main__":
    main()
