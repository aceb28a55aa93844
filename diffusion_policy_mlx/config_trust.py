"""What a config read back from a checkpoint may build.

A config you compose for ``train.py`` is yours and trusted: its ``_target_`` s are imported as
written. A config stored in a checkpoint is data from wherever the file came from, and
``eval.py``, a resume and :meth:`BaseWorkspace.create_from_checkpoint` rebuild objects from it.
So, before anything it names is imported:

* :func:`parse_stored_config` reads its YAML without YAML aliases (an alias bomb of a few
  hundred bytes expands to millions of nodes), nested at most :data:`MAX_STORED_DEPTH` deep, and
  with no interpolation: :func:`dump_stored_config` writes configs resolved (literal ``${``
  escaped), so one in a stored config was put there by hand, and resolving it could run a
  resolver (``oc.decode`` builds ``_target_`` nodes), read the environment or expand
  references into millions of nodes;
* :func:`check_stored_config` admits a ``_target_`` only when it is a literal string that, after
  the upstream aliases of :mod:`~diffusion_policy_mlx.config_compat`, names

  - a class or function defined in this package's ``workspace``, ``policy``, ``model``,
    ``schedulers``, ``dataset`` or ``env_runner`` modules, spelled where it is defined (so
    ``...base_workspace.os.system`` is refused), or one of :data:`ALLOWED_CALLABLES`;
  - or something under a module prefix the user trusts: ``DP_MLX_TRUSTED_TARGETS=my_pkg,other``
    in the environment, ``trusted_targets=[my_pkg]`` on ``eval.py``'s command line, or, when
    resuming, the targets and ``trusted_targets`` of the config ``train.py`` was started with.
    A stored config's own ``trusted_targets`` key counts for nothing.

``_partial_``, ``_args_``, ``_convert_`` and ``_recursive_`` need no check of their own: they
only change how an admitted callable is called, and targets nested in them are checked too.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Iterable, Iterator, Sequence
from types import ModuleType
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from diffusion_policy_mlx.common.stored_config import (  # noqa: F401  (re-exported)
    MAX_STORED_DEPTH,
    dump_stored_config,
    parse_stored_config,
)
from diffusion_policy_mlx.config_compat import PACKAGE, ConfigError, _targets, translate_target

TRUSTED_TARGETS_ENV = "DP_MLX_TRUSTED_TARGETS"
TRUSTED_TARGETS_KEY = "trusted_targets"
# Subpackages whose classes and functions configs name; nothing in them acts on import.
_BUILDING_BLOCKS = ("workspace", "policy", "model", "schedulers", "dataset", "env_runner")
_PACKAGE_PREFIXES = tuple(f"{PACKAGE}.{name}." for name in _BUILDING_BLOCKS)
# The targets of the upstream aliases outside those subpackages.
ALLOWED_CALLABLES = frozenset({f"{PACKAGE}.config_compat.AdamW", "mlx.nn.Identity"})


# ---------------------------------------------------------------------------------------------
# Which targets a stored config may name
# ---------------------------------------------------------------------------------------------


def trusted_prefixes(extra: Iterable[str] | str | None = ()) -> tuple[str, ...]:
    """Module prefixes the user trusts: ``DP_MLX_TRUSTED_TARGETS`` (comma-separated) and
    ``extra`` (a list, or a comma-separated string). ``my_pkg`` trusts ``my_pkg.*``."""
    if extra is None:
        extra = ()
    elif isinstance(extra, str):
        extra = extra.split(",")
    names = [*os.environ.get(TRUSTED_TARGETS_ENV, "").split(","), *extra]
    return tuple(p for p in (str(n).strip().rstrip(".") for n in names) if p)


def split_trusted_overrides(overrides: Sequence[str]) -> tuple[list[str], tuple[str, ...]]:
    """``eval.py``'s ``key=value`` overrides without ``trusted_targets=...``, and the module
    prefixes that one names (``trusted_targets=[my_pkg,other]`` or ``=my_pkg,other``)."""
    rest, extra = [], []
    for override in overrides:
        if override.partition("=")[0].strip() != TRUSTED_TARGETS_KEY:
            rest.append(override)
            continue
        value = OmegaConf.from_dotlist([override])[TRUSTED_TARGETS_KEY]
        extra.extend(value.split(",") if isinstance(value, str) else map(str, value))
    return rest, tuple(p for p in (e.strip().rstrip(".") for e in extra) if p)


def trusted_by(cfg: DictConfig) -> tuple[str, ...]:
    """What a config the user wrote trusts in a checkpoint it resumes: its own targets and
    its ``trusted_targets`` key."""
    own = [translate_target(str(node._target_)) for _, node in _targets(cfg)]
    return (*own, *trusted_prefixes(cfg.get(TRUSTED_TARGETS_KEY)))


def check_stored_config(cfg: DictConfig, source: Any, trusted: Iterable[str] = ()) -> None:
    """Refuse, before anything is imported, a config read from ``source`` (a checkpoint) whose
    ``_target_`` s are not all admitted (see the module docstring); ``trusted`` adds module
    prefixes to ``DP_MLX_TRUSTED_TARGETS``'s. One :class:`ConfigError` lists every refused
    key and target and says how to trust them."""
    prefixes = trusted_prefixes(trusted)
    problems = []
    for key, node in _target_nodes(cfg):
        if OmegaConf.is_interpolation(node, "_target_"):
            problems.append(f"  {key}: an interpolation; a stored target must be spelled out")
            continue
        target = node._get_node("_target_")._value()
        if not isinstance(target, str):
            problems.append(f"  {key}: {target!r} is not a dotted name")
        elif not _admitted(translate_target(target), prefixes):
            problems.append(f"  {key}: {target!r}")
    if problems:
        raise ConfigError(
            f"the config stored in {source} names targets this package does not build from a "
            "checkpoint, and nothing was imported:\n"
            + "\n".join(problems)
            + f"\nIf you trust this checkpoint and these modules, set {TRUSTED_TARGETS_ENV}="
            "my_pkg,other_pkg (module prefixes) or pass trusted_targets=[my_pkg] to eval.py."
        )


def workspace_class(cfg: DictConfig, source: Any, trusted: Iterable[str] = ()) -> type:
    """The workspace class a stored config names, imported once every target in the config is
    admitted by :func:`check_stored_config`."""
    check_stored_config(cfg, source, trusted)
    if "_target_" not in cfg:
        raise ConfigError(f"the config stored in {source} has no _target_ naming its workspace")
    return hydra.utils.get_class(translate_target(str(cfg._target_)))


def _target_nodes(cfg: DictConfig) -> Iterator[tuple[str, DictConfig]]:
    """``(dotted _target_ key, node)`` for every mapping that has a ``_target_``, whatever its
    value (literal, interpolation, not a string), walked without resolving anything."""
    stack: list[tuple[str, Any]] = [("", cfg)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, DictConfig):
            if "_target_" in node:
                yield (f"{path}._target_" if path else "_target_"), node
            children = [(f"{path}.{k}" if path else str(k), node._get_node(k)) for k in node]
            stack.extend(reversed(children))
        elif isinstance(node, ListConfig):
            stack.extend(reversed([(f"{path}[{i}]", node._get_node(i)) for i in range(len(node))]))


def _admitted(target: str, prefixes: Sequence[str]) -> bool:
    if target in ALLOWED_CALLABLES:
        return True
    if any(target == p or target.startswith(p + ".") for p in prefixes):
        return True
    return _defined_in_package(target)


def _defined_in_package(target: str) -> bool:
    """Whether ``target`` names a class or function of the building-block subpackages where it
    is defined. Only this package's own modules are imported to find out."""
    parts = target.split(".")
    if not target.startswith(_PACKAGE_PREFIXES) or any(p.startswith("_") for p in parts):
        return False
    module: ModuleType = importlib.import_module(".".join(parts[:2]))
    i = 2
    while i < len(parts) - 1 and module.__spec__.submodule_search_locations is not None:
        name = f"{module.__name__}.{parts[i]}"
        if importlib.util.find_spec(name) is None:
            break
        module = importlib.import_module(name)
        i += 1
    obj: Any = module
    for part in parts[i:]:
        obj = getattr(obj, part, None)
    return (
        callable(obj)
        and getattr(obj, "__module__", None) == module.__name__
        and getattr(obj, "__qualname__", None) == ".".join(parts[i:])
    )
