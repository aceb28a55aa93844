"""Convert a checkpoint written by upstream's workspaces into this package's format.

Upstream's ``BaseWorkspace.save_checkpoint`` pickles ``{'cfg': DictConfig, 'state_dicts':
{'model', 'ema_model', 'optimizer'}, 'pickles': {'epoch', 'global_step', ...}}`` with
``torch.save``. :func:`import_upstream_checkpoint` reads it through the restricted unpickler of
:mod:`~diffusion_policy_mlx.common.torch_pickle` (no code from the file runs, torch is not
needed), translates the config's targets to this package and refuses any other target, builds
the workspace the config names, loads the policy, EMA policy and normalizer weights, converts
AdamW's moments, and saves it all with the workspace's own ``save_checkpoint``: the result is a
checkpoint like any ``train.py`` writes, for ``eval.py`` or to resume training from.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from omegaconf import DictConfig, OmegaConf

from diffusion_policy_mlx.common import torch_pickle
from diffusion_policy_mlx.common.checkpoint_util import CheckpointError, load_optimizer
from diffusion_policy_mlx.common.upstream import load_upstream_state_dict, to_mlx_layout
from diffusion_policy_mlx.config_compat import (
    PACKAGE,
    ConfigError,
    check_targets,
    translate_config,
    translate_target,
)
from diffusion_policy_mlx.model.common.lr_scheduler import param_groups
from diffusion_policy_mlx.model.vision.robomimic_obs_encoder import drop_upstream_aliases
from diffusion_policy_mlx.workspace.base_workspace import BaseWorkspace, Policy

log = logging.getLogger(__name__)

# Targets an imported config may name once translated: this package's classes and the MLX ones
# the alias table maps torch's to. Anything else (``os.system``) is refused before it is imported.
ALLOWED_TARGET_PREFIXES = (f"{PACKAGE}.", "mlx.nn.")
NORMALIZER_PREFIX = "normalizer."


class UpstreamCheckpointError(CheckpointError):
    """An upstream checkpoint cannot be imported; the message names the file and the reason."""


@dataclass
class UpstreamCheckpoint:
    """The data of an upstream checkpoint, as numpy arrays and plain containers."""

    path: Path
    cfg: DictConfig  # targets translated to this package
    model: dict[str, np.ndarray]
    ema_model: dict[str, np.ndarray] | None
    optimizer: dict[str, Any] | None
    epoch: int  # upstream's: the last completed epoch
    global_step: int  # upstream's: the last step taken
    pickles: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImportResult:
    path: Path
    workspace: BaseWorkspace
    notes: list[str]


def read_upstream_checkpoint(path: str | Path) -> UpstreamCheckpoint:
    """Read ``path`` safely; raise one :class:`CheckpointError` naming what is wrong with it."""
    path = Path(path)
    payload = torch_pickle.load_torch_file(path)
    if not isinstance(payload, dict) or not {"cfg", "state_dicts"} <= payload.keys():
        keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise UpstreamCheckpointError(
            f"{path} is a PyTorch file but not an upstream workspace checkpoint (it holds "
            f"{keys}; expected cfg, state_dicts and pickles)"
        )
    state_dicts = payload["state_dicts"]
    if not isinstance(state_dicts, dict) or "model" not in state_dicts:
        raise UpstreamCheckpointError(f"{path}: state_dicts holds no 'model'")
    pickles = {
        key: torch_pickle.loads(value, f"{path} (pickles.{key})")
        for key, value in (payload.get("pickles") or {}).items()
    }
    cfg = _config(path, torch_pickle.config_to_container(payload["cfg"]))
    return UpstreamCheckpoint(
        path=path,
        cfg=cfg,
        model=_arrays(path, "model", state_dicts["model"]),
        ema_model=(
            _arrays(path, "ema_model", state_dicts["ema_model"])
            if state_dicts.get("ema_model") is not None
            else None
        ),
        optimizer=state_dicts.get("optimizer"),
        epoch=_counter(path, pickles, "epoch"),
        global_step=_counter(path, pickles, "global_step"),
        pickles=pickles,
    )


def _arrays(path: Path, what: str, state_dict: Any) -> dict[str, np.ndarray]:
    if not isinstance(state_dict, dict) or not all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state_dict.items()
    ):
        raise UpstreamCheckpointError(f"{path}: state_dicts.{what} is not a name -> tensor map")
    return dict(state_dict)


def _counter(path: Path, pickles: Mapping[str, Any], key: str) -> int:
    value = pickles.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UpstreamCheckpointError(f"{path}: pickles.{key} is {value!r}, not a step count")
    return value


def _config(path: Path, container: Any) -> DictConfig:
    """The stored config with upstream targets translated; any target outside this package
    (and the MLX classes the alias table names) is refused before anything is imported."""
    if not isinstance(container, dict) or "_target_" not in container:
        raise UpstreamCheckpointError(f"{path}: its cfg is not a workspace config")
    cfg = OmegaConf.create(container)
    try:
        cfg = translate_config(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    refused = [
        f"  {key}: {target!r}"
        for key, target in _target_values(OmegaConf.to_container(cfg, resolve=False))
        if not str(translate_target(target)).startswith(ALLOWED_TARGET_PREFIXES)
    ]
    if refused:
        raise ConfigError(
            f"{path}: its config names targets outside {PACKAGE}; refusing to build them:\n"
            + "\n".join(refused)
        )
    check_targets(cfg)
    return cfg


def _target_values(node: Any, path: str = "") -> list[tuple[str, str]]:
    """Every ``_target_`` value, interpolations and non-strings included (as text)."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                found.append((where, str(value)))
            else:
                found += _target_values(value, where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _target_values(value, f"{path}[{i}]")
    return found


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


def load_upstream_policy(policy: Policy, state_dict: Mapping[str, np.ndarray]) -> None:
    """Load an upstream policy ``state_dict`` (weights and normalizer) into ``policy``."""
    state_dict = drop_upstream_aliases(state_dict)
    normalizer = {
        k.removeprefix(NORMALIZER_PREFIX): v
        for k, v in state_dict.items()
        if k.startswith(NORMALIZER_PREFIX)
    }
    rest = {k: v for k, v in state_dict.items() if not k.startswith(NORMALIZER_PREFIX)}
    load_upstream_state_dict(policy, rest)
    policy.normalizer.load_state_dict(normalizer)


# ---------------------------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------------------------


def torch_parameter_order(
    workspace: BaseWorkspace, state_dict: Mapping[str, np.ndarray]
) -> list[str]:
    """The names of the parameters upstream's optimizer holds, in its index order.

    The U-Net workspaces give AdamW ``model.parameters()``: registration order, which is the
    state dict's order without buffers, without the second name of a shared module and
    without the normalizer (its parameters are made after the optimizer). The
    transformer workspaces give it ``get_optim_groups``' sorted decay and no-decay names, then
    (hybrid) the observation encoder's parameters.
    """
    ours = {k for k, _ in tree_flatten(workspace.model.parameters())}
    trainable = {k for k, _ in tree_flatten(workspace.model.trainable_parameters())}
    # A torch buffer (BatchNorm statistics, attention masks, SpatialSoftmax coordinates and
    # fixed temperature) is a frozen array here; a torch parameter is trainable here, or
    # absent here and gradient-free (upstream's _dummy_variable placeholders).
    registered = [
        k
        for k in drop_upstream_aliases(state_dict)
        if not k.startswith(NORMALIZER_PREFIX)
        and (k in trainable or (k not in ours and not k.endswith("num_batches_tracked")))
    ]
    if "_target_" in workspace.cfg.optimizer:
        return registered
    decay, no_decay = workspace.model.model.get_optim_groups(weight_decay=0.0)
    # upstream's transformer also has the (gradient-free) _dummy_variable of its
    # ModuleAttrMixin, which it puts among the undecayed parameters before sorting them
    dummy = ["_dummy_variable"] if "model._dummy_variable" in state_dict else []
    order = [f"model.{name}" for name in decay["params"]]
    order += [f"model.{name}" for name in sorted([*no_decay["params"], *dummy])]
    if "obs_encoder_weight_decay" in workspace.cfg.optimizer:
        order += [k for k in registered if k.startswith("obs_encoder.")]
    return order


def convert_optimizer(
    workspace: BaseWorkspace, upstream: UpstreamCheckpoint
) -> tuple[dict[str, mx.array] | None, str]:
    """The workspace optimizer's state from upstream's AdamW ``state_dict``.

    Returns ``(tensors for load_optimizer, note)``; tensors are None, and the note says why,
    when there is nothing to convert or the moments cannot be matched to parameters safely.
    """
    optimizer = upstream.optimizer
    if not isinstance(optimizer, dict) or not optimizer.get("state"):
        return None, "the checkpoint holds no AdamW moments (saved before the first step)"
    names = torch_parameter_order(workspace, upstream.model)
    ids = [i for group in optimizer.get("param_groups", []) for i in group.get("params", [])]
    if ids != list(range(len(names))):
        return None, (
            f"upstream's optimizer holds {len(ids)} parameters, the policy has {len(names)} in "
            "upstream's order; the moments cannot be matched to parameters"
        )
    moments: dict[str, dict[str, np.ndarray]] = {}
    steps = set()
    for index, state in optimizer["state"].items():
        if not isinstance(state, dict) or not {"exp_avg", "exp_avg_sq", "step"} <= state.keys():
            return None, "upstream's optimizer state is not AdamW's (exp_avg, exp_avg_sq, step)"
        moments[names[index]] = state
        steps.add(float(np.asarray(state["step"])))
    if len(steps) != 1:
        return None, f"upstream's parameters took different numbers of steps ({sorted(steps)})"
    model = workspace.model
    trainable = {k for k, _ in tree_flatten(model.trainable_parameters())}
    if moments.keys() != trainable:
        return None, (
            "upstream's moments and the policy's trainable parameters differ: "
            f"{sorted(moments.keys() ^ trainable)[:5]}"
        )
    m = to_mlx_layout(model, {k: v["exp_avg"] for k, v in moments.items()})
    v = to_mlx_layout(model, {k: v["exp_avg_sq"] for k, v in moments.items()})
    step = steps.pop()
    workspace.optimizer.init(model.trainable_parameters())
    tensors = {}
    for key, value in tree_flatten(workspace.optimizer.state):
        param, _, slot = key.rpartition(".")
        if key.startswith("states."):  # MultiOptimizer: states.<i>.<param path>.<slot>
            param = param.split(".", 2)[2] if slot in ("m", "v") else param
        if slot == "m" and param in m:
            new = m[param]
        elif slot == "v" and param in v:
            new = v[param]
        elif slot == "step":
            new = np.array(step)
        else:
            tensors[key] = value
            continue
        if tuple(new.shape) != tuple(value.shape):
            return None, f"moment of {param} has shape {new.shape}, the parameter {value.shape}"
        tensors[key] = mx.array(new).astype(value.dtype)
    return tensors, f"AdamW moments of {len(moments)} parameters converted (step {int(step)})"


# ---------------------------------------------------------------------------------------------
# The whole conversion
# ---------------------------------------------------------------------------------------------


def import_upstream_checkpoint(src: str | Path, dst: str | Path) -> ImportResult:
    """Convert upstream checkpoint ``src`` into this package's checkpoint ``dst``.

    Counters follow this package's convention (a checkpoint is saved after they advance), so
    upstream's ``epoch`` / ``global_step`` become ``epoch + 1`` / ``global_step + 1``: training
    resumed from ``dst`` starts with the epoch after the one upstream had finished.
    """
    upstream = read_upstream_checkpoint(src)
    dst = Path(dst)
    cls = hydra.utils.get_class(upstream.cfg._target_)
    if not (isinstance(cls, type) and issubclass(cls, BaseWorkspace)):
        raise ConfigError(f"{upstream.path}: _target_ {upstream.cfg._target_} is not a workspace")
    workspace = cls(upstream.cfg, output_dir=dst.parent)
    notes = []
    try:
        load_upstream_policy(workspace.model, upstream.model)
        if workspace.ema_model is not None:
            if upstream.ema_model is None:
                raise UpstreamCheckpointError(
                    f"{upstream.path}: training.use_ema is set but the checkpoint has no ema_model"
                )
            load_upstream_policy(workspace.ema_model, upstream.ema_model)
    except ValueError as e:
        raise UpstreamCheckpointError(f"{upstream.path}: {e}") from None

    tensors, note = convert_optimizer(workspace, upstream)
    if tensors is None:
        notes.append(f"optimizer: starts fresh ({note})")
        workspace.optimizer.init(workspace.model.trainable_parameters())
    else:
        notes.append(f"optimizer: {note}")
        load_optimizer(workspace.optimizer, tensors, workspace.model.trainable_parameters())

    for group in param_groups(workspace.optimizer):
        # the base rate a resumed LR schedule scales, as torch keeps it in each param group
        group.state["initial_lr"] = mx.array(group.learning_rate)
    workspace.epoch = upstream.epoch + 1
    workspace.global_step = upstream.global_step + 1
    if workspace.ema is not None:
        # As many EMA updates as upstream's run made, so its decay continues where it was.
        workspace.ema.optimization_step = workspace.global_step
        workspace.ema.decay = workspace.ema.get_decay(workspace.global_step - 1)
    path = workspace.save_checkpoint(path=dst)
    return ImportResult(path=path, workspace=workspace, notes=notes)
