"""Run upstream diffusion_policy configs unmodified.

Three things stand between an upstream YAML file and this package:

* ``_target_`` strings name upstream classes (``diffusion_policy.*``, ``diffusers.schedulers.*``,
  ``torch.optim.AdamW``). :func:`translate_config` rewrites them to ours before anything is
  instantiated, so Hydra's ``instantiate`` of nested configs just works.
* ``training.device`` says ``cuda:0``, ``mps`` or ``cpu``; :func:`mlx_device` maps it to an MLX
  device.
* ``${eval:...}`` interpolations, which upstream resolves with Python's ``eval``. Here they go
  through :func:`safe_eval`, an AST walk over a small expression language (literals, arithmetic,
  comparisons, ``and``/``or``/``not`` and ``a if cond else b``) that cannot call anything and
  whose cost is bounded (source length, nesting, size of every intermediate value).

Importing this module registers the ``eval`` resolver with OmegaConf.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import logging
import operator
import pkgutil
import re
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, ListConfig, OmegaConf, ValueNode

from diffusion_policy_mlx.common.stored_config import ConfigError  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    import mlx.core as mx
    import mlx.optimizers as optim

log = logging.getLogger(__name__)


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
# What one expression may cost: far above anything a config needs, far below what takes a
# noticeable time or memory to compute (every check runs before the operation it guards).
MAX_SOURCE_CHARS = 1000
MAX_DEPTH = 60  # nesting of the expression's syntax tree
MAX_INT_BITS = 1024  # about 10**308, the float range
MAX_LENGTH = 10_000  # characters of a string, elements (nested ones too) of a tuple or list
_VALUE_TYPES = (bool, int, float, str, type(None), tuple, list)
_SEQUENCES = (str, tuple, list)
_SYMBOLS = {ast.Mult: "*", ast.Pow: "**", ast.Mod: "%"}
# printf-style conversions: the width and precision decide the size of the formatted text
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(.)", re.S)
# characters that one formatted value may take beyond its width and precision: a 1024-bit int
# or a float written with %f
_DIGITS_PER_VALUE = 400


def safe_eval(expression: str | int | float | bool | None) -> Any:
    """Evaluate an ``${eval:...}`` expression without Python's ``eval``.

    Accepts literals (numbers, strings, ``True``/``False``/``None``, tuples and lists),
    ``+ - * / // % **``, unary ``- + not``, comparisons (``== != < <= > >= in is``),
    ``and``/``or`` and ``a if cond else b``: everything upstream's configs use. Names, calls,
    attribute access and subscripts are rejected, so a config cannot run code.

    Cost is bounded: the source (:data:`MAX_SOURCE_CHARS`), the syntax tree's depth
    (:data:`MAX_DEPTH`) and every intermediate value (ints by :data:`MAX_INT_BITS`, strings,
    tuples and lists by :data:`MAX_LENGTH`, checked before a ``*``, ``**`` or ``%`` is
    computed). Every failure, arithmetic ones included, is a :class:`ConfigError` naming the
    expression.
    """
    if not isinstance(expression, str):
        # ``${eval:${x}}`` hands over the already-typed value of x.
        return expression
    source = expression.strip()
    where = _shown(source)
    if len(source) > MAX_SOURCE_CHARS:
        raise ConfigError(
            f"{where}: the expression has {len(source)} characters; the eval resolver accepts "
            f"at most {MAX_SOURCE_CHARS}"
        )
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as e:
        raise ConfigError(f"{where}: cannot parse {source!r}: {e.msg}") from None
    except (RecursionError, MemoryError):
        raise ConfigError(f"{where}: the expression is nested too deeply to parse") from None
    if (depth := _tree_depth(tree.body)) > MAX_DEPTH:
        raise ConfigError(
            f"{where}: the expression is nested {depth} levels deep; the eval resolver accepts "
            f"at most {MAX_DEPTH}"
        )
    try:
        return _eval_node(tree.body, where)
    except ConfigError:
        raise
    except (ArithmeticError, TypeError, ValueError, RecursionError, MemoryError) as e:
        raise ConfigError(f"{where} failed: {type(e).__name__}: {e}") from None


def _shown(source: str) -> str:
    """The expression as error messages name it, shortened when it is long."""
    if len(source) > 120:
        source = f"{source[:100]}... ({len(source)} characters)"
    return f"${{eval:{source}}}"


def _tree_depth(node: ast.AST) -> int:
    deepest, stack = 0, [(node, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _size(value: Any) -> int:
    """Characters of a string; elements, nested ones counted, of a tuple or list."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, tuple | list):
        return len(value) + sum(_size(v) for v in value)
    return 1


def _bounded(value: Any, where: str) -> Any:
    """``value`` itself, once it is a config value within the resolver's bounds."""
    if not isinstance(value, _VALUE_TYPES):
        raise ConfigError(f"{where}: a {type(value).__name__} is not a config value")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ConfigError(f"{where}: an intermediate integer exceeds {MAX_INT_BITS} bits")
    if isinstance(value, tuple | list):
        for v in value:
            _bounded(v, where)
    if _size(value) > MAX_LENGTH:
        raise ConfigError(
            f"{where}: an intermediate {type(value).__name__} exceeds {MAX_LENGTH} elements"
        )
    return value


def _check_operands(op: ast.operator, a: Any, b: Any, where: str) -> None:
    """Refuse ``a op b`` before computing it when its result would exceed the bounds."""
    too_big = False
    match op:
        case ast.Mult() if isinstance(a, int) and isinstance(b, int):
            too_big = a.bit_length() + b.bit_length() > MAX_INT_BITS + 1
        case ast.Mult() if isinstance(a, int) and isinstance(b, _SEQUENCES):
            too_big = a * _size(b) > MAX_LENGTH
        case ast.Mult() if isinstance(a, _SEQUENCES) and isinstance(b, int):
            too_big = b * _size(a) > MAX_LENGTH
        case ast.Pow() if isinstance(a, int) and isinstance(b, int) and b > 0:
            too_big = (abs(a).bit_length() - 1) * b > MAX_INT_BITS
        case ast.Mod() if isinstance(a, str):
            too_big = _formatted_size(a, b, where) > MAX_LENGTH
    if too_big:
        raise ConfigError(
            f"{where}: {_SYMBOLS[type(op)]!r} would build a value beyond the resolver's bounds "
            f"({MAX_INT_BITS}-bit integers, {MAX_LENGTH}-element strings and sequences)"
        )


def _formatted_size(template: str, args: Any, where: str) -> int:
    """An upper bound on the length of ``template % args``."""
    bound = len(template) + 10 * _size(args)  # a repr() takes at most 10 characters a character
    for width, precision, _ in _PERCENT_SPEC.findall(template):
        if "*" in (width, precision):
            raise ConfigError(f"{where}: '*' widths are not allowed in % formatting")
        bound += int(width or 0) + int(precision or 0) + _DIGITS_PER_VALUE
    return bound


def _eval_node(node: ast.AST, where: str) -> Any:
    return _bounded(_eval_unbounded(node, where), where)


def _eval_unbounded(node: ast.AST, where: str) -> Any:
    match node:
        case ast.Constant(value=value):
            return value
        case ast.Name(id=name) if name.lower() in _NAMES:
            return _NAMES[name.lower()]
        case ast.Tuple(elts=elts):
            return tuple(_eval_node(e, where) for e in elts)
        case ast.List(elts=elts):
            return [_eval_node(e, where) for e in elts]
        case ast.UnaryOp(op=op, operand=operand) if type(op) in _UNARY_OPS:
            return _UNARY_OPS[type(op)](_eval_node(operand, where))
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY_OPS:
            a, b = _eval_node(left, where), _eval_node(right, where)
            _check_operands(op, a, b, where)
            return _BINARY_OPS[type(op)](a, b)
        case ast.BoolOp(op=ast.And(), values=values):
            result: Any = True
            for v in values:
                result = _eval_node(v, where)
                if not result:
                    return result
            return result
        case ast.BoolOp(op=ast.Or(), values=values):
            result = False
            for v in values:
                result = _eval_node(v, where)
                if result:
                    return result
            return result
        case ast.Compare(left=left, ops=ops, comparators=comparators):
            a = _eval_node(left, where)
            for op, right in zip(ops, comparators, strict=True):
                if type(op) not in _COMPARE_OPS:
                    break
                b = _eval_node(right, where)
                if not _COMPARE_OPS[type(op)](a, b):
                    return False
                a = b
            else:
                return True
        case ast.IfExp(test=test, body=body, orelse=orelse):
            return _eval_node(body if _eval_node(test, where) else orelse, where)
    raise ConfigError(
        f"{where}: {ast.unparse(node)!r} is not allowed; the eval resolver accepts only "
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


# Upstream's config names (its config/*.yaml and config/task/*.yaml): one of these that a
# config folder of this package lacks is "not supported yet", not a misspelling.
UPSTREAM_WORKSPACE_CONFIGS = frozenset(
    f"train_{name}_workspace"
    for name in (
        "bet_lowdim",
        "diffusion_transformer_hybrid",
        "diffusion_transformer_lowdim",
        "diffusion_transformer_lowdim_kitchen",
        "diffusion_transformer_lowdim_pusht",
        "diffusion_transformer_real_hybrid",
        "diffusion_unet_ddim_hybrid",
        "diffusion_unet_ddim_lowdim",
        "diffusion_unet_hybrid",
        "diffusion_unet_image",
        "diffusion_unet_image_pretrained",
        "diffusion_unet_lowdim",
        "diffusion_unet_real_hybrid",
        "diffusion_unet_real_image",
        "diffusion_unet_real_pretrained",
        "diffusion_unet_video",
        "ibc_dfo_hybrid",
        "ibc_dfo_lowdim",
        "ibc_dfo_real_hybrid",
        "robomimic_image",
        "robomimic_lowdim",
        "robomimic_real_image",
    )
)
UPSTREAM_TASK_CONFIGS = frozenset(
    [
        *(
            f"{task}_{obs}{abs_}"
            for task in ("lift", "can", "square", "tool_hang", "transport")
            for obs in ("lowdim", "image")
            for abs_ in ("", "_abs")
        ),
        "blockpush_lowdim_seed",
        "blockpush_lowdim_seed_abs",
        "kitchen_lowdim",
        "kitchen_lowdim_abs",
        "pusht_image",
        "pusht_lowdim",
        "real_pusht_image",
    ]
)


def check_targets(cfg: DictConfig, shipped_tasks: Sequence[str] = ()) -> None:
    """Import every ``_target_`` in ``cfg`` now, so a typo fails before any data is loaded.

    A target in this package's namespace that does not exist (an upstream workspace, policy,
    dataset or env runner not ported yet) is reported as not supported yet, with the modules of
    that kind this package has; for one under ``task.``, with ``shipped_tasks`` too.
    """
    missing, problems = [], []
    for path, node in _targets(cfg):
        target = str(node._target_)
        error = _locate_error(target)
        if error is None:
            continue
        # (a module of ours that exists but cannot import is a broken install, not a gap)
        if target.startswith(PACKAGE + ".") and not error.startswith("importing "):
            missing.append(f"  {_key(path)}: {target!r} ({error}): {_not_yet(target)}")
        else:
            problems.append(f"  {_key(path)}: {target!r} ({error})")
    if missing:
        tasks = ""
        if shipped_tasks and any(line.startswith("  task.") for line in missing):
            task = OmegaConf.select(cfg, "task.name", default=None)
            tasks = f"\ntask {task!r}" if task else "\nthis task"
            tasks += f" is not supported yet; supported tasks: {', '.join(sorted(shipped_tasks))}."
        raise ConfigError(
            f"this config needs classes {PACKAGE} does not have yet:\n"
            + "\n".join(missing + problems)
            + tasks
        )
    if problems:
        raise ConfigError(
            "these config targets cannot be imported from this installation:\n"
            + "\n".join(problems)
            + f"\nCheck the spelling, or whether {PACKAGE} implements that class yet."
        )


# Modules named like a kind that hold what its members share, not a member a config names
# (``dataset/sequence_dataset.py``: the base of the replay-buffer datasets).
_SHARED_MODULES = frozenset({"sequence_dataset"})


def _not_yet(target: str) -> str:
    """``not supported yet; supported: ...``: the modules of the same kind (``*_workspace``,
    ``*_dataset``, ...) in the deepest package of ``target`` that exists."""
    parts = target.split(".")
    package, depth = None, 1
    while depth < len(parts):
        spec = importlib.util.find_spec(".".join(parts[:depth]))
        if spec is None:
            break
        if spec.submodule_search_locations is None:
            # a module that exists and lacks the class: nothing of its kind to list
            return "not supported yet"
        package, depth = spec, depth + 1
    if package is None:
        return "not supported yet"
    kind = parts[depth - 1].rpartition("_")[2]
    modules = sorted(
        m.name
        for m in pkgutil.iter_modules(package.submodule_search_locations)
        if not m.name.startswith("_")
    )
    same_kind = [
        m
        for m in modules
        if m.endswith(f"_{kind}") and not m.startswith("base_") and m not in _SHARED_MODULES
    ]
    return f"not supported yet; supported: {', '.join(same_kind or modules)}"


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

    A GPU request on a machine without an MLX GPU backend falls back to the CPU with a warning
    (one per process, whatever the name asked for), so upstream configs
    (``training.device: cuda:0``) run everywhere.
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
        _warn_no_gpu()
        return mx.Device(mx.cpu)
    if index and int(index) != 0:
        log.warning("training.device=%s: MLX uses one GPU per process, using GPU 0", name)
    return mx.Device(mx.gpu)


@functools.cache
def _warn_no_gpu() -> None:
    log.warning(
        "this MLX build has no GPU backend: running on the CPU "
        "(ask for device 'cpu' to skip this message)"
    )


def set_device(name: str) -> mx.Device:
    """Make the MLX device for ``name`` (see :func:`mlx_device`) the default and return it."""
    import mlx.core as mx

    device = mlx_device(name)
    mx.set_default_device(device)
    return device
