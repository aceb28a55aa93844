"""Learning-rate schedules with warmup, stepped once per optimizer update like upstream's.

``get_scheduler`` mirrors upstream's (which wraps diffusers' ``TYPE_TO_SCHEDULER_FUNCTION`` and
torch's ``LambdaLR``): after ``s`` calls of ``scheduler.step()`` the optimizer's learning rate
is ``base_lr * lr_lambda(s)``, so the s-th optimizer update (0-based) uses ``lambda(s)``.
"""

import math
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np

LrLambda = Callable[[int], float]


def param_groups(optimizer: optim.Optimizer) -> list[optim.Optimizer]:
    """The optimizers whose learning rates are scheduled: a MultiOptimizer's parts, each like
    a torch param group with its own base rate."""
    if isinstance(optimizer, optim.MultiOptimizer):
        return list(optimizer.optimizers)
    return [optimizer]


def _as_float(lr: mx.array) -> float:
    """A float32 learning rate as the Python float a user configured: the shortest decimal that
    rounds to it (1e-4, not 1.0000000474974513e-4), so logged rates read like upstream's."""
    return float(str(np.float32(lr.item())))


class LambdaLR:
    """torch's ``LambdaLR`` for ``mlx.optimizers``: sets ``learning_rate`` to
    ``base_lr * lr_lambda(last_epoch)`` on every :meth:`step`.

    ``base_lr`` is each optimizer's ``initial_lr`` state entry if present (written here and
    saved with the optimizer state, as torch writes ``initial_lr`` into its param groups),
    otherwise its current learning rate. ``last_epoch=k`` resumes so that the next update uses
    ``lambda(k + 1)``.
    """

    def __init__(self, optimizer: optim.Optimizer, lr_lambda: LrLambda, last_epoch: int = -1):
        self.optimizer = optimizer
        self.lr_lambda = lr_lambda
        groups = param_groups(optimizer)
        if last_epoch != -1:
            missing = [i for i, g in enumerate(groups) if "initial_lr" not in g.state]
            if missing:
                raise KeyError(
                    f"resuming an LR schedule at last_epoch={last_epoch} needs the optimizer "
                    "state saved with it ('initial_lr' is missing): load the optimizer state "
                    "first, or start at last_epoch=-1 and call load_state_dict"
                )
        for g in groups:
            g.state.setdefault("initial_lr", mx.array(g.learning_rate))
        self.base_lrs = [_as_float(g.state["initial_lr"]) for g in groups]
        self.last_epoch = last_epoch
        self.step()

    def step(self) -> None:
        """Advance one optimizer update and set the learning rate(s) it will use."""
        self.last_epoch += 1
        self._apply()

    def _apply(self) -> None:
        factor = self.lr_lambda(self.last_epoch)
        self._last_lr = [base * factor for base in self.base_lrs]
        for g, lr in zip(param_groups(self.optimizer), self._last_lr, strict=True):
            g.learning_rate = lr

    def get_last_lr(self) -> list[float]:
        """The learning rate of each group for the next optimizer update, as Python floats."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """JSON-friendly resume state: ``last_epoch`` and ``base_lrs``."""
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output and set the optimizer's rates to match."""
        base_lrs = [float(lr) for lr in state_dict["base_lrs"]]
        groups = param_groups(self.optimizer)
        if len(base_lrs) != len(groups):
            raise ValueError(
                f"LR scheduler state has {len(base_lrs)} base rates but the optimizer has "
                f"{len(groups)} groups"
            )
        self.base_lrs = base_lrs
        self.last_epoch = int(state_dict["last_epoch"])
        for g, lr in zip(groups, base_lrs, strict=True):
            g.state["initial_lr"] = mx.array(lr)
        self._apply()


def _warmup(step: int, num_warmup_steps: int) -> float:
    return float(step) / float(max(1, num_warmup_steps))


def get_constant_schedule(optimizer: optim.Optimizer, last_epoch: int = -1) -> LambdaLR:
    """The base learning rate throughout."""
    return LambdaLR(optimizer, lambda _: 1.0, last_epoch)


def get_constant_schedule_with_warmup(
    optimizer: optim.Optimizer, num_warmup_steps: int, last_epoch: int = -1
) -> LambdaLR:
    """Linear warmup from 0 over ``num_warmup_steps``, then constant."""

    def lr_lambda(step: int) -> float:
        return _warmup(step, num_warmup_steps) if step < num_warmup_steps else 1.0

    return LambdaLR(optimizer, lr_lambda, last_epoch)


def get_linear_schedule_with_warmup(
    optimizer: optim.Optimizer, num_warmup_steps: int, num_training_steps: int, last_epoch: int = -1
) -> LambdaLR:
    """Linear warmup, then linear decay to 0 at ``num_training_steps``."""

    def lr_lambda(step: int) -> float:
        if step < num_warmup_steps:
            return _warmup(step, num_warmup_steps)
        remaining = float(num_training_steps - step)
        return max(0.0, remaining / float(max(1, num_training_steps - num_warmup_steps)))

    return LambdaLR(optimizer, lr_lambda, last_epoch)


def get_cosine_schedule_with_warmup(
    optimizer: optim.Optimizer,
    num_warmup_steps: int,
    num_training_steps: int,
    num_cycles: float = 0.5,
    last_epoch: int = -1,
) -> LambdaLR:
    """Linear warmup, then a cosine from 1 down to 0 (``num_cycles=0.5``: half a period)."""

    def lr_lambda(step: int) -> float:
        if step < num_warmup_steps:
            return _warmup(step, num_warmup_steps)
        progress = float(step - num_warmup_steps) / float(
            max(1, num_training_steps - num_warmup_steps)
        )
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))

    return LambdaLR(optimizer, lr_lambda, last_epoch)


def get_cosine_with_hard_restarts_schedule_with_warmup(
    optimizer: optim.Optimizer,
    num_warmup_steps: int,
    num_training_steps: int,
    num_cycles: int = 1,
    last_epoch: int = -1,
) -> LambdaLR:
    """Linear warmup, then ``num_cycles`` cosine decays, each restarting at the base rate."""

    def lr_lambda(step: int) -> float:
        if step < num_warmup_steps:
            return _warmup(step, num_warmup_steps)
        progress = float(step - num_warmup_steps) / float(
            max(1, num_training_steps - num_warmup_steps)
        )
        if progress >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(num_cycles) * progress) % 1.0))))

    return LambdaLR(optimizer, lr_lambda, last_epoch)


def get_polynomial_decay_schedule_with_warmup(
    optimizer: optim.Optimizer,
    num_warmup_steps: int,
    num_training_steps: int,
    lr_end: float = 1e-7,
    power: float = 1.0,
    last_epoch: int = -1,
) -> LambdaLR:
    """Linear warmup, then polynomial decay (``power``) to ``lr_end`` at ``num_training_steps``."""
    first = param_groups(optimizer)[0]
    lr_init = _as_float(first.state.get("initial_lr", first.learning_rate))
    if not lr_init > lr_end:
        raise ValueError(f"lr_end ({lr_end}) must be below the initial lr ({lr_init})")

    def lr_lambda(step: int) -> float:
        if step < num_warmup_steps:
            return _warmup(step, num_warmup_steps)
        if step > num_training_steps:
            return lr_end / lr_init
        decay_steps = num_training_steps - num_warmup_steps
        pct_remaining = 1 - (step - num_warmup_steps) / decay_steps
        return ((lr_init - lr_end) * pct_remaining**power + lr_end) / lr_init

    return LambdaLR(optimizer, lr_lambda, last_epoch)


SCHEDULES: dict[str, Callable[..., LambdaLR]] = {
    "linear": get_linear_schedule_with_warmup,
    "cosine": get_cosine_schedule_with_warmup,
    "cosine_with_restarts": get_cosine_with_hard_restarts_schedule_with_warmup,
    "polynomial": get_polynomial_decay_schedule_with_warmup,
    "constant": get_constant_schedule,
    "constant_with_warmup": get_constant_schedule_with_warmup,
}


def get_scheduler(
    name: str,
    optimizer: optim.Optimizer,
    num_warmup_steps: int | None = None,
    num_training_steps: int | None = None,
    **kwargs: Any,
) -> LambdaLR:
    """The named schedule on ``optimizer``; ``kwargs`` (``last_epoch``, ``num_cycles``, ...)
    pass through. ``'constant'`` ignores the step counts, as upstream's does."""
    if name not in SCHEDULES:
        raise ValueError(f"lr_scheduler {name!r} is unknown: use one of {sorted(SCHEDULES)}")
    schedule = SCHEDULES[name]
    if name == "constant":
        return schedule(optimizer, **kwargs)
    if num_warmup_steps is None:
        raise ValueError(f"lr_scheduler {name!r} needs num_warmup_steps")
    if name == "constant_with_warmup":
        return schedule(optimizer, num_warmup_steps=num_warmup_steps, **kwargs)
    if num_training_steps is None:
        raise ValueError(f"lr_scheduler {name!r} needs num_training_steps")
    return schedule(
        optimizer,
        num_warmup_steps=num_warmup_steps,
        num_training_steps=num_training_steps,
        **kwargs,
    )
