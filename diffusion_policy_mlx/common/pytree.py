"""Helpers for nested dicts of arrays (upstream's ``dict_apply``)."""

from collections.abc import Callable
from typing import Any


def dict_apply(x: dict[str, Any], func: Callable[[Any], Any]) -> dict[str, Any]:
    """Apply ``func`` to every leaf of a nested dict, keeping its structure."""
    return {k: dict_apply(v, func) if isinstance(v, dict) else func(v) for k, v in x.items()}
