"""Checkpoints edited as an adversary would: change the stored config or state, then recompute
the metadata digest so that only the trust checks stand in the way."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import yaml

from diffusion_policy_mlx.common import checkpoint_util


def craft(
    source: Path,
    dest: Path,
    config: Callable[[dict], dict | str] | None = None,
    state: Callable[[dict], dict] | None = None,
) -> Path:
    """Copy checkpoint ``source`` to ``dest`` with ``config`` applied to its stored config (a
    dict; return a dict, or a str to store as raw YAML) and ``state`` to its state."""
    arrays, metadata = mx.load(str(source), format="safetensors", return_metadata=True)
    if config is not None:
        edited: Any = config(yaml.safe_load(metadata["config"]))
        metadata["config"] = edited if isinstance(edited, str) else yaml.safe_dump(edited)
    if state is not None:
        metadata["state"] = json.dumps(state(json.loads(metadata["state"])))
    metadata["digest"] = checkpoint_util._metadata_digest(metadata, arrays)
    return save_raw(dest, arrays, metadata)


def save_raw(dest: Path, arrays: dict[str, mx.array], metadata: dict[str, str]) -> Path:
    """Write a safetensors file under any name (MLX appends ``.safetensors`` to others)."""
    tmp = dest.with_name(dest.name + ".safetensors")
    mx.save_safetensors(str(tmp), arrays, metadata=metadata)
    return tmp.replace(dest)


def evil_module(folder: Path, name: str, marker: Path) -> str:
    """Write module ``name`` into ``folder`` that, when imported or called, writes ``marker``."""
    (folder / f"{name}.py").write_text(
        f"from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('imported')\n"
        f"def run(*args, **kwargs):\n"
        f"    Path({str(marker)!r}).write_text('called')\n"
    )
    return name
