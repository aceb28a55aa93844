"""A config as a checkpoint stores it: written resolved, with a literal ``${`` escaped
(:func:`dump_stored_config`), and read back as untrusted data (:func:`parse_stored_config`):
no YAML aliases, nested at most :data:`MAX_STORED_DEPTH` deep, and no interpolation.

What a stored config may then build is :mod:`diffusion_policy_mlx.config_trust`'s concern; this
module sits in ``common`` so that the checkpoint format (``common/checkpoint_util.py``) can read
and write configs without importing a layer above it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf, grammar_parser
from omegaconf.errors import GrammarParseError, OmegaConfBaseException
from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser


class ConfigError(ValueError):
    """A config names something this package cannot build; the message says which key and why."""


MAX_STORED_DEPTH = 64
# ``${`` and the backslashes before it
_INTERPOLATION_START = re.compile(r"(\\*)\$\{")
# libyaml's parser where PyYAML was built with it: a hundred times faster
_YAML_LOADER = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader


def parse_stored_config(text: str) -> DictConfig:
    """The config a checkpoint stores, as YAML text, parsed without running or expanding
    anything; raises :class:`ConfigError` naming the first offending key or YAML position."""
    try:
        _check_yaml_events(text)
        cfg = OmegaConf.create(text)
    except (yaml.YAMLError, OmegaConfBaseException) as e:
        raise ConfigError(f"the stored config is not a valid config: {e}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"the stored config is a {type(cfg).__name__}, not a mapping")
    for key, value in _leaves(OmegaConf.to_container(cfg, resolve=False)):
        if isinstance(value, str) and "${" in value and _is_interpolation(value, key):
            raise ConfigError(
                f"stored config key {key}: {value[:200]!r} is an interpolation; configs are "
                "stored resolved, so this one was edited by hand"
            )
    return cfg


def dump_stored_config(cfg: DictConfig) -> str:
    """``cfg`` resolved, as the YAML :func:`parse_stored_config` reads back to the same values:
    a string that holds ``${`` is escaped so that it stays a string."""
    container = OmegaConf.to_container(cfg, resolve=True)
    return OmegaConf.to_yaml(_escape_interpolations(container))


def _escape_interpolations(node: Any) -> Any:
    if isinstance(node, str):
        # OmegaConf reads \${ as a literal ${, and \\ before ${ as one backslash
        return _INTERPOLATION_START.sub(lambda m: m[1] * 2 + "\\${", node)
    if isinstance(node, dict):
        return {k: _escape_interpolations(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_escape_interpolations(v) for v in node]
    return node


def _check_yaml_events(text: str) -> None:
    """Refuse YAML aliases and deep nesting while scanning, before any node is built."""
    depth = 0
    for event in yaml.parse(text, Loader=_YAML_LOADER):
        where = f"line {event.start_mark.line + 1}, column {event.start_mark.column + 1}"
        if isinstance(event, yaml.AliasEvent):
            raise ConfigError(
                f"the stored config uses a YAML alias ({where}); configs written by this "
                "package never do"
            )
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            depth += 1
            if depth > MAX_STORED_DEPTH:
                raise ConfigError(
                    f"the stored config is nested more than {MAX_STORED_DEPTH} levels deep "
                    f"({where})"
                )
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            depth -= 1


def _leaves(container: Any) -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` for every leaf of a plain dict/list tree, without recursion."""
    stack: list[tuple[str, Any]] = [("", container)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            stack.extend(
                reversed([(f"{path}.{k}" if path else str(k), v) for k, v in node.items()])
            )
        elif isinstance(node, list):
            stack.extend(reversed([(f"{path}[{i}]", v) for i, v in enumerate(node)]))
        else:
            yield path, node


def _is_interpolation(value: str, key: str) -> bool:
    """Whether OmegaConf would resolve anything in ``value`` (an escaped ``\\${`` is text)."""
    try:
        tree = grammar_parser.parse(value)
    except (GrammarParseError, RecursionError):
        raise ConfigError(
            f"stored config key {key}: {value[:200]!r} is not a valid config string"
        ) from None
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, OmegaConfGrammarParser.InterpolationContext):
            return True
        stack.extend(getattr(node, "children", None) or ())
    return False
