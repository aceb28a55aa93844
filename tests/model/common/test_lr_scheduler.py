"""LR schedules against upstream's get_scheduler values (lr_scheduler.json)."""

import json
import math
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest

from diffusion_policy_mlx.model.common.lr_scheduler import get_scheduler


@pytest.fixture(scope="module")
def ref(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "lr_scheduler.json").read_text())


@pytest.mark.parametrize("name", ["cosine", "linear", "constant", "constant_with_warmup"])
def test_schedules_match_upstream(ref, name):
    kw = ref["kwargs"]
    values = ref["schedules"][name]
    opt = optim.AdamW(learning_rate=kw["base_lr"])
    sched = get_scheduler(
        name,
        opt,
        num_warmup_steps=kw["num_warmup_steps"],
        num_training_steps=kw["num_training_steps"],
    )
    for s in ref["steps"]:
        assert sched.last_epoch == s
        assert abs(sched.lr_lambda(s) - values["multiplier"][s]) <= 1e-12
        assert math.isclose(sched.get_last_lr()[0], values["lr"][s], rel_tol=1e-12, abs_tol=1e-20)
        # the optimizer holds the float32 rounding of the same rate
        assert opt.learning_rate.item() == np.float32(values["lr"][s])
        sched.step()


def test_updates_use_the_scheduled_rate_also_when_compiled():
    model = nn.Linear(1, 1, bias=False)
    model.weight = mx.zeros((1, 1))
    opt = optim.SGD(learning_rate=0.5)
    sched = get_scheduler("linear", opt, num_warmup_steps=2, num_training_steps=4)

    def loss_fn(m: nn.Module, x: mx.array) -> mx.array:
        return m(x).sum()

    grad_fn = nn.value_and_grad(model, loss_fn)

    state = [model.state, opt.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def train_step(x: mx.array) -> mx.array:
        loss, grads = grad_fn(model, x)
        opt.update(model, grads)
        return loss

    # lambdas 0, 0.5, 1, 0.5 times base 0.5 with gradient 1: w = -(0 + .25 + .5 + .25)
    for _ in range(4):
        train_step(mx.ones((1, 1)))
        mx.eval(model.parameters())
        sched.step()
    assert model.weight.item() == pytest.approx(-1.0, abs=1e-7)


def test_resume_from_state_dict_and_from_optimizer_state():
    opt = optim.AdamW(learning_rate=1e-3)
    sched = get_scheduler("cosine", opt, num_warmup_steps=5, num_training_steps=100)
    for _ in range(30):
        sched.step()
    expected = sched.get_last_lr()
    saved_opt_state = dict(opt.state)

    # fresh optimizer + scheduler, then the scheduler's own state
    opt2 = optim.AdamW(learning_rate=1e-3)
    sched2 = get_scheduler("cosine", opt2, num_warmup_steps=5, num_training_steps=100)
    sched2.load_state_dict(json.loads(json.dumps(sched.state_dict())))
    assert sched2.last_epoch == 30 and sched2.get_last_lr() == expected
    assert opt2.learning_rate.item() == np.float32(expected[0])

    # upstream's way: optimizer state restored (it carries initial_lr), last_epoch=global_step-1
    opt3 = optim.AdamW(learning_rate=1e-3)
    opt3.state = saved_opt_state
    sched3 = get_scheduler(
        "cosine", opt3, num_warmup_steps=5, num_training_steps=100, last_epoch=29
    )
    assert sched3.base_lrs == [1e-3]  # not the decayed current rate
    assert sched3.get_last_lr() == expected

    with pytest.raises(KeyError, match="initial_lr"):
        get_scheduler("cosine", optim.AdamW(learning_rate=1e-3), 5, 100, last_epoch=29)


def test_multi_optimizer_groups_keep_their_own_base_rates():
    opt = optim.MultiOptimizer(
        [optim.AdamW(learning_rate=1e-3), optim.AdamW(learning_rate=1e-4)],
        [lambda path, _: path.startswith("a")],
    )
    sched = get_scheduler("constant_with_warmup", opt, num_warmup_steps=4)
    sched.step()
    assert sched.get_last_lr() == [0.25e-3, 0.25e-4]
    assert [o.learning_rate.item() for o in opt.optimizers] == [
        np.float32(0.25e-3),
        np.float32(0.25e-4),
    ]


def test_polynomial_and_restarts_hand_derived():
    opt = optim.SGD(learning_rate=1.0)
    poly = get_scheduler(
        "polynomial", opt, num_warmup_steps=0, num_training_steps=10, lr_end=0.1, power=2.0
    )
    assert poly.lr_lambda(5) == pytest.approx(0.9 * 0.25 + 0.1)
    assert poly.lr_lambda(10) == pytest.approx(0.1)
    assert poly.lr_lambda(12) == pytest.approx(0.1)
    restarts = get_scheduler(
        "cosine_with_restarts", opt, num_warmup_steps=2, num_training_steps=12, num_cycles=2
    )
    assert restarts.lr_lambda(1) == pytest.approx(0.5)
    assert restarts.lr_lambda(5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.6)))
    assert restarts.lr_lambda(7) == pytest.approx(1.0)  # second cycle restarts at the top
    assert restarts.lr_lambda(12) == 0.0


def test_bad_arguments_are_named():
    opt = optim.SGD(learning_rate=1e-4)
    with pytest.raises(ValueError, match="lr_scheduler 'step' is unknown"):
        get_scheduler("step", opt)
    with pytest.raises(ValueError, match="needs num_warmup_steps"):
        get_scheduler("cosine", opt)
    with pytest.raises(ValueError, match="needs num_training_steps"):
        get_scheduler("linear", opt, num_warmup_steps=10)
    with pytest.raises(ValueError, match="lr_end"):
        get_scheduler("polynomial", opt, 0, 10, lr_end=1e-3)
