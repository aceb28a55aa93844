"""Summarize a Hydra sweep: each configuration's ``test/mean_score`` over its seeds.

    python -m diffusion_policy_mlx.scripts.multirun_metrics SWEEP_DIR [-k 10] [--key test/mean_score]

Every job folder of ``SWEEP_DIR`` (``train.py -m ...``, any launcher) holds ``logs.json.txt`` and
``.hydra/overrides.yaml``. Jobs whose overrides differ only in ``training.seed`` form one
configuration. Per job: the maximum of the metric and the mean of its last ``k`` values (the
paper's "max" and "mean of last checkpoints"; of all of them where a job logged fewer, and the
table says how many); per configuration: the mean and standard deviation of both over seeds.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from diffusion_policy_mlx.common.json_logger import read_json_log

SEED_KEY = "training.seed"


@dataclass(frozen=True)
class RunMetrics:
    """One job: its configuration (overrides without the seed), seed, max and mean of its last
    ``n_last`` values (``k``, or all of them where the job logged fewer)."""

    config: str
    seed: str
    max: float
    last_k_mean: float
    n_last: int


@dataclass(frozen=True)
class ConfigMetrics:
    """One configuration over its seeds: mean and std of the jobs' max and last-k means;
    ``n_last``: the fewest and the most values a job's last-k mean averaged."""

    config: str
    n_seeds: int
    max_mean: float
    max_std: float
    last_k_mean: float
    last_k_std: float
    n_last: tuple[int, int]


def run_metrics(job_dir: Path, key: str, k: int) -> RunMetrics:
    """Metrics of one job folder; raises naming the file when it has no values of ``key``."""
    overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []
    seed = next((o.split("=", 1)[1] for o in overrides if o.startswith(f"{SEED_KEY}=")), "-")
    config = " ".join(o for o in overrides if not o.startswith(f"{SEED_KEY}="))
    values = [r[key] for r in read_json_log(job_dir / "logs.json.txt", required_keys=(key,))]
    if not values:
        raise ValueError(f"{job_dir / 'logs.json.txt'}: no '{key}' values (did any rollout run?)")
    last = values[-k:]
    return RunMetrics(config, seed, float(np.max(values)), float(np.mean(last)), len(last))


def sweep_metrics(
    sweep_dir: Path, key: str = "test/mean_score", k: int = 10
) -> list[ConfigMetrics]:
    """Aggregate every job under ``sweep_dir`` by configuration, in first-seen order."""
    job_dirs = sorted(p.parent for p in Path(sweep_dir).glob("*/logs.json.txt"))
    if not job_dirs:
        raise FileNotFoundError(
            f"{sweep_dir}: no */logs.json.txt; is it a `train.py -m` sweep dir?"
        )
    groups: dict[str, list[RunMetrics]] = defaultdict(list)
    for job in job_dirs:
        run = run_metrics(job, key, k)
        groups[run.config].append(run)
    result = []
    for config, runs in groups.items():
        maxes = np.array([r.max for r in runs])
        lasts = np.array([r.last_k_mean for r in runs])
        n_last = (min(r.n_last for r in runs), max(r.n_last for r in runs))
        result.append(
            ConfigMetrics(
                config, len(runs), maxes.mean(), maxes.std(), lasts.mean(), lasts.std(), n_last
            )
        )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--key", default="test/mean_score")
    parser.add_argument("-k", type=int, default=10, help="how many last values to average")
    args = parser.parse_args(argv)
    rows = sweep_metrics(args.sweep_dir, args.key, args.k)
    # Where a job logged fewer than k values, each row says how many its mean is over.
    full = all(r.n_last == (args.k, args.k) for r in rows)
    print(f"| configuration | seeds | max {args.key} | mean of last {args.k if full else 'k'} |")
    print("| --- | ---: | ---: | ---: |")
    for r in rows:
        low, high = r.n_last
        count = "" if full else f" (k={low})" if low == high else f" (k={low}-{high})"
        print(
            f"| {r.config or '(defaults)'} | {r.n_seeds} | {r.max_mean:.3f} ± {r.max_std:.3f} "
            f"| {r.last_k_mean:.3f} ± {r.last_k_std:.3f}{count} |"
        )


if __name__ == "__main__":
    main()
