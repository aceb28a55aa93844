"""The config keys the workspace uses, checked before anything is built or loaded.

A wrong value used to surface late: ``n_obs_steps > horizon`` inside a matmul, a zero
``checkpoint_every`` after a whole epoch, ``num_epochs=abc`` as a ``TypeError``, and
``num_epochs=-1`` trained nothing and exited 0. :func:`validate_workspace_config` raises one
:class:`~diffusion_policy_mlx.config_compat.ConfigError` naming the key, the value and the rule.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from diffusion_policy_mlx.config_compat import ConfigError
from diffusion_policy_mlx.model.common.lr_scheduler import SCHEDULES

_ABSENT = object()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


def _optional(rule: tuple[Callable[[Any], bool], str]) -> tuple[Callable[[Any], bool], str]:
    check, text = rule
    return (lambda v: v is None or check(v)), f"null or {text}"


_BOOL = (lambda v: isinstance(v, bool)), "true or false"
_NUMBER_AT_LEAST_0 = (
    (lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v >= 0),
    "a number >= 0",
)

# key -> (rule, description): every key the training loop reads
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "training.seed": _int_at_least(0),
    "training.num_epochs": _int_at_least(0),
    "training.gradient_accumulate_every": _int_at_least(1),
    "training.lr_warmup_steps": _int_at_least(0),
    "training.lr_scheduler": ((lambda v: v in SCHEDULES), f"one of {sorted(SCHEDULES)}"),
    "training.checkpoint_every": _int_at_least(1),
    "training.val_every": _int_at_least(1),
    "training.rollout_every": _int_at_least(1),
    "training.sample_every": _int_at_least(1),
    "training.max_train_steps": _optional(_int_at_least(1)),
    "training.max_val_steps": _optional(_int_at_least(0)),
    "training.tqdm_interval_sec": _NUMBER_AT_LEAST_0,
    "training.use_ema": _BOOL,
    "training.resume": _BOOL,
    "training.debug": _BOOL,
    "dataloader.batch_size": _int_at_least(1),
    "val_dataloader.batch_size": _int_at_least(1),
    "checkpoint.topk.k": _int_at_least(0),
    "checkpoint.topk.mode": ((lambda v: v in ("max", "min")), "'max' or 'min'"),
    "checkpoint.save_last_ckpt": _BOOL,
}


def validate_workspace_config(cfg: DictConfig) -> None:
    """Raise a :class:`ConfigError` naming the first key the workspace cannot use: a missing
    key, a value of the wrong type or range (:data:`RULES`), or a policy window that breaks
    upstream's rules between ``horizon``, ``n_obs_steps`` and ``n_action_steps``."""
    for key, (check, text) in RULES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            raise ConfigError(f"The config has no {key}; the workspace needs {text} there.")
        if not check(value):
            raise ConfigError(
                f"Config key {key} must be {text}; got {value!r} ({type(value).__name__}). "
                f"Fix it in the config or override it, e.g. {key}=<value>."
            )
    _check_policy_window(cfg)


def _check_policy_window(cfg: DictConfig) -> None:
    """Upstream's constraints on the policy's window of ``horizon`` steps: the first
    ``n_obs_steps`` are observed, and the ``n_action_steps`` executed actions start at step
    ``n_obs_steps - 1`` (``n_obs_steps`` for the U-Net lowdim policy without
    ``oa_step_convention``) and must end inside the window."""
    policy = cfg.get("policy")
    if policy is None or not all(k in policy for k in ("horizon", "n_obs_steps", "n_action_steps")):
        return
    keys = ("horizon", "n_obs_steps", "n_action_steps")
    for key in keys:
        value = policy[key]
        if not _is_int(value) or value < 1:
            raise ConfigError(f"Config key {_setting(cfg, key)} must be an integer >= 1.")
    horizon, n_obs, n_action = (policy[key] for key in keys)
    if n_obs > horizon:
        raise ConfigError(
            f"{_setting(cfg, 'n_obs_steps')} is larger than {_setting(cfg, 'horizon')}: the "
            "policy observes the first n_obs_steps steps of each horizon-step window. Lower "
            "n_obs_steps or raise horizon."
        )
    start, why = _first_action_step(policy, n_obs)
    if start + n_action > horizon:
        raise ConfigError(
            f"{_setting(cfg, 'n_action_steps')} does not fit {_setting(cfg, 'horizon')} with "
            f"{_setting(cfg, 'n_obs_steps')}: the executed actions start at window step "
            f"{start} ({why}; steps count from 0) and would run to step {start + n_action - 1}, "
            f"past the window's last step {horizon - 1}. Use n_action_steps <= "
            f"{horizon - start}, or raise horizon."
        )
    dataset = OmegaConf.select(cfg, "task.dataset", default=None)
    if dataset is None:
        return
    if dataset.get("horizon", horizon) != horizon:
        raise ConfigError(
            f"task.dataset.horizon={dataset.horizon} differs from {_setting(cfg, 'horizon')}; "
            "the policy trains on the dataset's windows, so both must be the same."
        )
    dataset_obs = dataset.get("n_obs_steps")
    if dataset_obs is not None and not (_is_int(dataset_obs) and n_obs <= dataset_obs <= horizon):
        raise ConfigError(
            f"task.dataset.n_obs_steps={dataset_obs!r} must be null or an integer from "
            f"{_setting(cfg, 'n_obs_steps')} to {_setting(cfg, 'horizon')}: the dataset keeps "
            "only that many observation steps and the policy reads n_obs_steps of them."
        )


def _first_action_step(policy: DictConfig, n_obs: int) -> tuple[int, str]:
    """Where the executed actions start in the window, and why (upstream's policies: at the
    last observed step, or after it for ``oa_step_convention=False`` where a policy has it)."""
    policy_cls = hydra.utils.get_class(policy._target_)
    param = inspect.signature(policy_cls).parameters.get("oa_step_convention")
    if param is None:
        return n_obs - 1, "n_obs_steps - 1"
    if policy.get("oa_step_convention", param.default):
        return n_obs - 1, "n_obs_steps - 1, with policy.oa_step_convention=True"
    return n_obs, "n_obs_steps, with policy.oa_step_convention=False"


def _setting(cfg: DictConfig, key: str) -> str:
    """``policy.<key>=<value>``, named by the top-level key it comes from in the shipped
    configs (``n_obs_steps=20 (policy.n_obs_steps)``) where that key holds the same value."""
    value = cfg.policy[key]
    top = cfg.get(key)
    if top is not None and top == value:
        return f"{key}={value!r} (policy.{key})"
    return f"policy.{key}={value!r}"
