"""Run upstream diffusion_policy configs unmodified.

Three things stand between an upstream YAML file and this package:

* ``_target_`` strings name upstream classes (``diffusion_policy.*``, ``diffusers.schedulers.*``,
  ``torch.optim.AdamW``). :func:`translate_config` rewrites them to ours before anything is
  instantiated, so Hydra's ``instantiate`` of nested configs just works.
* ``training.device`` says ``cuda:0``, ``mps`` or ``cpu``; :func:`mlx_device` maps it to an MLX
  device.
* ``${eval:...}`` interpolations, which upstream resolves with Python's ``eval``. Here they go
  through :func:`safe_eval`, an AST walk over a small expression language (literals, arithmetic,
  comparisons, ``and``/``or``/``not`` and ``a if cond else b``) that cannot call anything.

Importing this module registers the ``eval`` resolver with OmegaConf.
"""

from __future__ import annotations

import ast
import importlib
import logging
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, ListConfig, OmegaConf, ValueNode

if TYPE_CHECKING:
    import mlx.core as mx
    import mlx.optimizers as optim

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config names something this package cannot build; the message says which key and why."""


# ---------------------------------------------------------------------------------------------
# The ``eval`` resolver
# ---------------------------------------------------------------------------------------------

_BINARY_OPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPS: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
    ast.Not: operator.not_,
}
_COMPARE_OPS: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}
# YAML spellings a config author may write inside an expression.
_NAMES = {"true": True, "false": False, "null": None, "none": None}
# Bounds ``**`` so that a config cannot make the resolver allocate a gigantic integer.
_MAX_EXPONENT = 64


def safe_eval(expression: str | int | float | bool | None) -> Any:
    """Evaluate an ``${eval:...}`` expression without Python's ``eval``.

    Accepts literals (numbers, strings, ``True``/``False``/``None``, tuples and lists),
    ``+ - * / // % **``, unary ``- + not``, comparisons (``== != < <= > >= in is``),
    ``and``/``or`` and ``a if cond else b``: everything upstream's configs use. Names, calls,
    attribute access and subscripts are rejected, so a config cannot run code.
    """
    if not isinstance(expression, str):
        # ``${eval:${x}}`` hands over the already-typed value of x.
        return expression
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ConfigError(f"${{eval:...}} cannot parse {expression!r}: {e.msg}") from None
    return _eval_node(tree.body, expression)


def _eval_node(node: ast.AST, source: str) -> Any:
    match node:
        case ast.Constant(value=value):
            return value
        case ast.Name(id=name) if name.lower() in _NAMES:
            return _NAMES[name.lower()]
        case ast.Tuple(elts=elts):
            return tuple(_eval_node(e, source) for e in elts)
        case ast.List(elts=elts):
            return [_eval_node(e, source) for e in elts]
        case ast.UnaryOp(op=op, operand=operand) if type(op) in _UNARY_OPS:
            return _UNARY_OPS[type(op)](_eval_node(operand, source))
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY_OPS:
            a, b = _eval_node(left, source), _eval_node(right, source)
            if isinstance(op, ast.Pow) and isinstance(b, int | float) and abs(b) > _MAX_EXPONENT:
                raise ConfigError(
                    f"${{eval:{source}}}: exponent {b} is larger than {_MAX_EXPONENT}"
                )
            return _BINARY_OPS[type(op)](a, b)
        case ast.BoolOp(op=ast.And(), values=values):
            result: Any = True
            for v in values:
                result = _eval_node(v, source)
                if not result:
                    return result
            return result
        case ast.BoolOp(op=ast.Or(), values=values):
            result = False
            for v in values:
                result = _eval_node(v, source)
                if result:
                    return result
            return result
        case ast.Compare(left=left, ops=ops, comparators=comparators):
            a = _eval_node(left, source)
            for op, right in zip(ops, comparators, strict=True):
                if type(op) not in _COMPARE_OPS:
                    break
                b = _eval_node(right, source)
                if not _COMPARE_OPS[type(op)](a, b):
                    return False
                a = b
            else:
                return True
        case ast.IfExp(test=test, body=body, orelse=orelse):
            return _eval_node(body if _eval_node(test, source) else orelse, source)
    raise ConfigError(
        f"${{eval:{source}}}: {ast.unparse(node)!r} is not allowed; the eval resolver accepts only "
        "literals, arithmetic, comparisons, and/or/not and 'a if cond else b'"
    )


def register_resolvers() -> None:
    """Register the safe ``eval`` resolver (replacing any other, e.g. upstream's Python ``eval``)."""
    OmegaConf.register_new_resolver("eval", safe_eval, replace=True)


register_resolvers()


# ---------------------------------------------------------------------------------------------
# ``_target_`` aliases
# ---------------------------------------------------------------------------------------------

PACKAGE = "diffusion_policy_mlx"
UPSTREAM_PACKAGE = "diffusion_policy"

TARGET_ALIASES: dict[str, str] = {
    "diffusers.schedulers.scheduling_ddpm.DDPMScheduler": f"{PACKAGE}.schedulers.ddpm.DDPMScheduler",
    "diffusers.schedulers.DDPMScheduler": f"{PACKAGE}.schedulers.ddpm.DDPMScheduler",
    "diffusers.DDPMScheduler": f"{PACKAGE}.schedulers.ddpm.DDPMScheduler",
    "diffusers.schedulers.scheduling_ddim.DDIMScheduler": f"{PACKAGE}.schedulers.ddim.DDIMScheduler",
    "diffusers.schedulers.DDIMScheduler": f"{PACKAGE}.schedulers.ddim.DDIMScheduler",
    "diffusers.DDIMScheduler": f"{PACKAGE}.schedulers.ddim.DDIMScheduler",
    "torch.optim.AdamW": f"{PACKAGE}.config_compat.AdamW",
    "torch.optim.adamw.AdamW": f"{PACKAGE}.config_compat.AdamW",
    "torch.nn.Identity": "mlx.nn.Identity",
}
# Frameworks we replace: a target under them without an alias cannot work here.
_FOREIGN_PREFIXES = ("torch.", "diffusers.", "torchvision.", "robomimic.")


def translate_target(target: str) -> str:
    """Map an upstream ``_target_`` to this package (ours pass through unchanged)."""
    if target in TARGET_ALIASES:
        return TARGET_ALIASES[target]
    if target.startswith(UPSTREAM_PACKAGE + "."):
        return PACKAGE + target[len(UPSTREAM_PACKAGE) :]
    return target


def _targets(node: Any, path: str = "") -> Iterator[tuple[str, DictConfig]]:
    """Yield ``(dotted key, node)`` for every config node holding a literal ``_target_``."""
    if isinstance(node, DictConfig):
        if (
            "_target_" in node
            and isinstance(node._get_node("_target_"), ValueNode)
            and not OmegaConf.is_interpolation(node, "_target_")
        ):
            yield path, node
        for key, value in node.items_ex(resolve=False):
            yield from _targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from _targets(node._get_node(i), f"{path}[{i}]")


def _key(path: str) -> str:
    return f"{path}._target_" if path else "_target_"


def translate_config(cfg: DictConfig) -> DictConfig:
    """Return a copy of ``cfg`` with every ``_target_`` rewritten by :func:`translate_target`.

    Raises :class:`ConfigError` naming the key when a target belongs to a framework this
    package replaces (torch, diffusers, ...) and has no MLX equivalent.
    """
    cfg = cfg.copy()
    for path, node in _targets(cfg):
        target = str(node._target_)
        new = translate_target(target)
        if new.startswith(_FOREIGN_PREFIXES):
            known = ", ".join(sorted(TARGET_ALIASES))
            raise ConfigError(
                f"config key {_key(path)}: {target!r} has no MLX equivalent in {PACKAGE}. "
                f"Supported foreign targets: {known}."
            )
        if new != target:
            node._target_ = new
    return cfg


def check_targets(cfg: DictConfig) -> None:
    """Import every ``_target_`` in ``cfg`` now, so a typo fails before any data is loaded."""
    problems = []
    for path, node in _targets(cfg):
        target = str(node._target_)
        error = _locate_error(target)
        if error is not None:
            problems.append(f"  {_key(path)}: {target!r} ({error})")
    if problems:
        raise ConfigError(
            "these config targets cannot be imported from this installation:\n"
            + "\n".join(problems)
            + f"\nCheck the spelling, or whether {PACKAGE} implements that class yet."
        )


def _locate_error(target: str) -> str | None:
    module_name, _, attr = target.rpartition(".")
    while module_name:
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and not module_name.startswith(e.name):
                # The module exists but one of its own imports is missing.
                return f"importing {module_name} failed: {e}"
            module_name, _, parent = module_name.rpartition(".")
            attr = f"{parent}.{attr}"
            continue
        name = module_name
        for part in attr.split("."):
            obj = getattr(obj, part, None)
            name = f"{name}.{part}"
            if obj is None:
                return f"{name} does not exist"
        return None
    return "no such module"


# ---------------------------------------------------------------------------------------------
# torch.optim.AdamW and training.device
# ---------------------------------------------------------------------------------------------


def AdamW(  # noqa: N802 - named like the torch class its configs ask for
    params: Any = None,
    lr: float = 1e-3,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
) -> optim.AdamW:
    """``torch.optim.AdamW`` as an MLX optimizer, with torch's defaults and update rule.

    ``params`` is accepted because upstream calls ``instantiate(cfg.optimizer,
    params=model.parameters())``, and ignored: an MLX optimizer is given the parameters at each
    ``update``. Bias correction is on, as in torch.
    """
    # imported here, as in mlx_device: the package imports this module for its resolver, and
    # env/ imports without MLX
    import mlx.optimizers as optim

    if amsgrad:
        raise ConfigError("optimizer.amsgrad=True is not supported by the MLX AdamW; set it False")
    return optim.AdamW(
        learning_rate=lr,
        betas=list(betas),
        eps=eps,
        weight_decay=weight_decay,
        bias_correction=True,
    )


_GPU_NAMES = ("cuda", "mps", "gpu", "metal")


def mlx_device(name: str) -> mx.Device:
    """Map a torch-style device string (``cuda:0``, ``mps``, ``cpu``, ``gpu``) to an MLX device.

    A GPU request on a machine without an MLX GPU backend falls back to the CPU with a warning,
    so upstream configs (``training.device: cuda:0``) run everywhere.
    """
    import mlx.core as mx

    kind, _, index = str(name).strip().lower().partition(":")
    if kind == "cpu":
        return mx.Device(mx.cpu)
    if kind not in _GPU_NAMES or (index and not index.isdigit()):
        raise ConfigError(
            f"training.device={name!r} is not a device; use 'cpu', 'cuda:0', 'mps' or 'gpu'"
        )
    if not mx.is_available(mx.gpu):
        log.warning("training.device=%s: this MLX build has no GPU backend, using the CPU", name)
        return mx.Device(mx.cpu)
    if index and int(index) != 0:
        log.warning("training.device=%s: MLX uses one GPU per process, using GPU 0", name)
    return mx.Device(mx.gpu)


def set_device(name: str) -> mx.Device:
    """Make the MLX device for ``name`` (see :func:`mlx_device`) the default and return it."""
    import mlx.core as mx

    device = mlx_device(name)
    mx.set_default_device(device)
    return device
