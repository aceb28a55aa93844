"""Draw a run's ``test/mean_score`` and train loss against epochs from its ``logs.json.txt``.

    python -m diffusion_policy_mlx.scripts.plot_training RUN/logs.json.txt -o curves.png
    python -m diffusion_policy_mlx.scripts.plot_training RUN/logs.json.txt -o curves.png \
        --eval 120=RUN/eval/eval_log.json     # add eval.py's score of the epoch-120 checkpoint

The loss panel also shows ``val_loss`` where the run logged it.

Needs matplotlib (``pip install -e ".[plot]"``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffusion_policy_mlx.common.json_logger import read_json_log


@dataclass(frozen=True)
class TrainingCurves:
    """Per-epoch series read from ``logs.json.txt``.

    ``epochs``/``train_loss``: (E,) every logged epoch and its mean train loss;
    ``score_epochs``/``test_mean_score``: (R,) the epochs that ran a rollout and their score;
    ``val_epochs``/``val_loss``: (V,) the epochs that ran validation and their loss.
    """

    epochs: np.ndarray
    train_loss: np.ndarray
    score_epochs: np.ndarray
    test_mean_score: np.ndarray
    val_epochs: np.ndarray
    val_loss: np.ndarray


def read_curves(path: str | Path) -> TrainingCurves:
    """Collect the curves; an epoch's last record carries its mean loss and its evaluations."""
    last_of_epoch: dict[int, dict] = {}
    for record in read_json_log(path, required_keys=("train_loss",)):
        last_of_epoch[record["epoch"]] = record
    if not last_of_epoch:
        raise ValueError(f"{path}: no records with 'train_loss'; is it a run's logs.json.txt?")
    epochs = sorted(last_of_epoch)
    scored = [e for e in epochs if "test/mean_score" in last_of_epoch[e]]
    validated = [e for e in epochs if "val_loss" in last_of_epoch[e]]
    return TrainingCurves(
        epochs=np.array(epochs),
        train_loss=np.array([last_of_epoch[e]["train_loss"] for e in epochs]),
        score_epochs=np.array(scored),
        test_mean_score=np.array([last_of_epoch[e]["test/mean_score"] for e in scored]),
        val_epochs=np.array(validated),
        val_loss=np.array([last_of_epoch[e]["val_loss"] for e in validated]),
    )


def read_eval_score(spec: str) -> tuple[int, float]:
    """``EPOCH=PATH`` -> (EPOCH, ``test/mean_score`` of the ``eval_log.json`` at PATH)."""
    epoch, sep, path = spec.partition("=")
    if not sep or not epoch.isdigit():
        raise ValueError(f"--eval {spec!r}: expected EPOCH=PATH, e.g. 120=RUN/eval/eval_log.json")
    log = json.loads(Path(path).read_text())
    if "test/mean_score" not in log:
        raise ValueError(f"--eval {spec!r}: {path} has no 'test/mean_score'; is it eval.py's log?")
    return int(epoch), float(log["test/mean_score"])


def plot_curves(
    curves: TrainingCurves,
    out: Path,
    title: str = "",
    eval_scores: list[tuple[int, float]] | None = None,
) -> None:
    """Two panels sharing the epoch axis: test score (top; in-training rollouts and any
    ``eval_scores`` (epoch, score) of eval.py) and log-scale train/validation loss (bottom)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    fig, (ax_score, ax_loss) = plt.subplots(2, 1, sharex=True, figsize=(6, 5))
    ax_score.plot(curves.score_epochs, curves.test_mean_score, "o-", label="in-training rollout")
    if eval_scores:
        ax_score.plot(*zip(*eval_scores, strict=True), "*", ms=12, label="eval.py")
        ax_score.legend(loc="lower right")
    ax_score.set_ylabel("test/mean_score")
    ax_score.set_ylim(0, 1)
    ax_score.grid(alpha=0.3)
    ax_loss.semilogy(curves.epochs, curves.train_loss, label="train")
    if curves.val_epochs.size:
        ax_loss.semilogy(curves.val_epochs, curves.val_loss, ".-", label="validation")
        ax_loss.legend(loc="upper right")
    ax_loss.set_ylabel("loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.grid(alpha=0.3)
    if title:
        ax_score.set_title(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="a run's logs.json.txt")
    parser.add_argument("-o", "--output", type=Path, default=Path("training_curves.png"))
    parser.add_argument("--title", default="")
    parser.add_argument(
        "--eval",
        action="append",
        default=[],
        metavar="EPOCH=PATH",
        help="eval.py's eval_log.json of the checkpoint of epoch EPOCH, the number in its file "
        "name and in eval.py's output (repeatable)",
    )
    args = parser.parse_args(argv)
    curves = read_curves(args.log)
    eval_scores = [read_eval_score(spec) for spec in args.eval]
    plot_curves(curves, args.output, args.title, eval_scores)
    best = curves.test_mean_score.max() if curves.test_mean_score.size else float("nan")
    line = f"{args.output}: {curves.epochs.size} epochs, best test/mean_score {best:.3f}"
    if eval_scores:
        line += ", eval.py " + ", ".join(f"{s:.3f} (epoch {e})" for e, s in eval_scores)
    print(line)


if __name__ == "__main__":
    main()
