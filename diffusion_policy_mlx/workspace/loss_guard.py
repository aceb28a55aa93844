"""Stop training at the first non-finite loss instead of training on NaN.

The training loop already reads every step's loss as a Python float to log it; checking that
float costs nothing and adds no synchronization. The check runs before the step is logged or
anything is saved, so the last checkpoint on disk holds the last good weights.
"""

from __future__ import annotations

import math
from pathlib import Path


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and checkpoint."""


def require_finite_loss(loss: float, global_step: int, epoch: int, checkpoint_dir: Path) -> None:
    """Raise :class:`TrainingDivergedError` unless ``loss`` (the step's training loss) is finite,
    naming the step and the last checkpoint in ``checkpoint_dir``."""
    if math.isfinite(loss):
        return
    last = last_checkpoint(checkpoint_dir)
    if last is None:
        saved = f"No checkpoint had been written yet (in {checkpoint_dir})."
    else:
        saved = (
            f"The last good checkpoint is {last}; nothing after it was saved, and train.py "
            "resumes from checkpoints/latest.ckpt."
        )
    raise TrainingDivergedError(
        f"Training stopped: train_loss is {loss} at global step {global_step} (epoch {epoch}). "
        f"{saved} Look for the cause in the data (values far outside the others) or the "
        "optimization (optimizer.lr, training.lr_warmup_steps) before training again."
    )


def last_checkpoint(checkpoint_dir: Path) -> Path | None:
    """``latest.ckpt`` if present, else the most recently written ``*.ckpt`` (top-k only)."""
    latest = checkpoint_dir / "latest.ckpt"
    if latest.is_file():
        return latest
    saved = sorted(checkpoint_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    return saved[-1] if saved else None
