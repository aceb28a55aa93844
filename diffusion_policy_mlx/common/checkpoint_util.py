"""Checkpoints as data: one safetensors file per ``.ckpt``, no pickle.

A checkpoint holds tensors namespaced by owner (``model.``, ``ema_model.``, ``optimizer.``,
``rng.``) and string metadata: the resolved config as YAML, a JSON ``state`` (epoch,
global_step, RNG states, LR-scheduler and top-k bookkeeping), a CRC-32 of every tensor and a
SHA-256 ``digest`` of all the other metadata and of every tensor's name, dtype and shape.
Writes go to a temporary file that is renamed over the target, so a crash never leaves a
half-written ``latest.ckpt``. Loading checks the file's structure and checksums and names the
damage; loading into a module checks every key and shape and names the mismatches.

The stored config is read as untrusted data (:func:`~diffusion_policy_mlx.common.stored_config.\
parse_stored_config`); what it may build is decided where it is built.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import re
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from omegaconf import DictConfig, OmegaConf

from diffusion_policy_mlx.common import atomic_file
from diffusion_policy_mlx.common.fitted_module import FittedModule
from diffusion_policy_mlx.common.stored_config import (
    ConfigError,
    dump_stored_config,
    parse_stored_config,
)

log = logging.getLogger(__name__)

FORMAT = "diffusion_policy_mlx.checkpoint"
# 2: metadata covered by ``digest``. Version 1 files are read with a warning.
VERSION = 2
# A safetensors header beyond this is certainly not one of ours: the file is something else.
_MAX_HEADER_BYTES = 100 * 2**20
# The stored config (as it is escaped into the header) may take this much of it: the rest is
# room for the state, the checksums and the tensor table. Configs are a few KB; this bounds
# the time a config takes to write and to read back (about a second a MB).
MAX_CONFIG_BYTES = 4 * 2**20
_TMP_SUFFIX = ".tmp.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not a checkpoint of this package."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not fit the model/config it is loaded into; names the keys."""


@dataclass
class Checkpoint:
    """The contents of a ``.ckpt`` file."""

    path: Path
    tensors: dict[str, mx.array]
    cfg: DictConfig
    state: dict[str, Any]

    @property
    def finished_epoch(self) -> int | None:
        """The epoch this checkpoint was saved at the end of, numbered as the logs and the top-k
        file names number it (``epoch=0001-...`` is epoch 1, the second); None before any.
        ``state["epoch"]`` is the count of finished epochs, where a resumed run continues."""
        return int(self.state["epoch"]) - 1 if int(self.state["epoch"]) > 0 else None

    def group(self, prefix: str) -> dict[str, mx.array]:
        """Tensors under ``prefix.`` with the prefix removed."""
        head = prefix + "."
        return {k[len(head) :]: v for k, v in self.tensors.items() if k.startswith(head)}


# ---------------------------------------------------------------------------------------------
# File format
# ---------------------------------------------------------------------------------------------


def _crc32(array: mx.array) -> str:
    if array.dtype == mx.bfloat16:
        array = array.view(mx.uint16)
    return f"{zlib.crc32(np.ascontiguousarray(array).data):08x}"


def _metadata_digest(metadata: Mapping[str, Any], tensors: Mapping[str, mx.array]) -> str:
    """SHA-256 of every metadata entry but the digest itself, and of each tensor's name, dtype
    and shape (the CRC-32s cover the tensors' bytes, not how they are read)."""
    covered = {
        "metadata": {k: v for k, v in metadata.items() if k != "digest"},
        "tensors": {k: [str(v.dtype), list(v.shape)] for k, v in tensors.items()},
    }
    return hashlib.sha256(json.dumps(covered, sort_keys=True).encode()).hexdigest()


def _header_bytes(text: str) -> int:
    """Bytes ``text`` takes as a JSON string in a safetensors header."""
    return len(json.dumps(text, ensure_ascii=False).encode())


def check_config_size(cfg: DictConfig) -> None:
    """Refuse a config too large for a checkpoint this package can read back, before a run
    trains for an epoch and then cannot save (or resume) it."""
    # JSON is cheap to write, YAML is not (a 100 MB string takes minutes); the two differ by
    # less than 2x, so JSON decides all but configs near the limit
    size = len(json.dumps(OmegaConf.to_container(cfg, resolve=True), ensure_ascii=False))
    if size < MAX_CONFIG_BYTES // 2:
        return
    if size <= 2 * MAX_CONFIG_BYTES:
        size = _header_bytes(dump_stored_config(cfg))
        if size <= MAX_CONFIG_BYTES:
            return
    raise ConfigError(
        f"the resolved config takes about {size / 2**20:.1f} MiB in a checkpoint; checkpoints "
        f"hold at most {MAX_CONFIG_BYTES / 2**20:.0f} MiB of config. Look for a very large "
        "value (a long string or list) and move that data to a file the config names."
    )


def save_checkpoint(
    path: str | Path,
    tensors: Mapping[str, mx.array],
    cfg: DictConfig,
    state: Mapping[str, Any],
) -> Path:
    """Write a checkpoint atomically: a temporary file in the same folder, then a rename.

    ``state`` must be JSON-serializable; ``cfg`` is stored resolved, as YAML. A checkpoint
    that :func:`load_checkpoint` would refuse as too large is not written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = dict(tensors)
    mx.eval(list(tensors.values()))
    check_config_size(cfg)
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "config": dump_stored_config(cfg),
        "state": json.dumps(state),
        "crc32": json.dumps({k: _crc32(v) for k, v in tensors.items()}),
    }
    metadata["digest"] = _metadata_digest(metadata, tensors)
    # each tensor's entry: its name, dtype, shape and offsets
    header = sum(_header_bytes(v) for v in metadata.values()) + 128 * len(tensors)
    if header > _MAX_HEADER_BYTES:
        raise CheckpointError(
            f"not writing {path}: its header would take {header} bytes, more than the "
            f"{_MAX_HEADER_BYTES} a checkpoint may have"
        )
    for stale in path.parent.glob(f".{path.name}.*{_TMP_SUFFIX}"):
        # Left by a process killed mid-write; never a complete checkpoint.
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{_TMP_SUFFIX}")
    try:
        # Through a Python file, so a failed write is an OSError with its errno.
        with atomic_file.replacing(path, tmp) as f:
            mx.save_safetensors(f, tensors, metadata=metadata)
    except OSError as e:
        kept = f"the previous {path.name} is intact" if path.is_file() else "no earlier one existed"
        raise CheckpointError(
            f"could not write checkpoint {path}: {_os_error(e)}. The partial file was removed; "
            f"{kept}. {_os_error_hint(e, path.parent)}"
        ) from None
    return path


def check_checkpoint_folder(folder: Path) -> None:
    """Raise :class:`CheckpointError` now, before any training, if checkpoints cannot be
    written to ``folder``."""
    try:
        atomic_file.check_writable(folder)
    except OSError as e:
        raise CheckpointError(
            f"cannot write checkpoints to {folder}: {_os_error(e)}. Nothing was trained. "
            f"{_os_error_hint(e, folder)}"
        ) from None


def _os_error(error: OSError) -> str:
    code = errno.errorcode.get(error.errno, error.errno)
    return f"{error.strerror or error} ({code})"


def _os_error_hint(error: OSError, folder: Path) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "Free disk space (or choose another hydra.run.dir), then run again."
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"Make {folder} writable (or choose another hydra.run.dir), then run again."
    return "Fix the file system problem, then run again."


def _read_header(path: Path) -> dict[str, Any]:
    """Parse and check the safetensors header against the file size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(
                f"checkpoint {path} is truncated: {size} bytes, too short for a safetensors header"
            )
        if head.startswith(b"PK\x03\x04"):
            raise CheckpointError(
                f"{path} is a zip archive, not a safetensors checkpoint: probably an upstream "
                "PyTorch checkpoint; convert it first with `python -m "
                f"diffusion_policy_mlx.scripts.import_upstream {path} -o NEW.ckpt`"
            )
        (header_len,) = struct.unpack("<Q", head)
        first = f.read(1)
        if first not in (b"{", b"") or header_len > _MAX_HEADER_BYTES:
            raise CheckpointError(
                f"{path} is not a safetensors checkpoint, or its header is corrupt "
                f"(header length field {header_len}, header starts with {first!r})"
            )
        if 8 + header_len > size:
            raise CheckpointError(
                f"checkpoint {path} is truncated: its header needs {header_len} bytes but the file "
                f"has {size - 8} after the length field"
            )
        raw = first + f.read(header_len - 1)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} has a corrupt header: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint {path} has a corrupt header: not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} has a corrupt header: metadata is not a mapping")
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a diffusion_policy_mlx checkpoint, or its "
            f"metadata is corrupt (format={meta.get('format')!r}, expected {FORMAT!r})"
        )
    version = meta.get("version")
    if not (isinstance(version, str) and version.isdigit() and int(version) >= 1):
        raise CheckpointError(f"checkpoint {path} has a corrupt format version {version!r}")
    if int(version) > VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}; this diffusion_policy_mlx "
            f"reads up to version {VERSION}: upgrade the package"
        )
    data_size = size - 8 - header_len
    try:
        ends = {name: int(info["data_offsets"][1]) for name, info in header.items()}
    except (TypeError, KeyError, IndexError, ValueError):
        raise CheckpointError(
            f"checkpoint {path} has a corrupt header: a tensor entry has no data offsets"
        ) from None
    for name, end in sorted(ends.items(), key=lambda kv: kv[1]):
        if end > data_size:
            raise CheckpointError(
                f"checkpoint {path} is truncated: tensor {name!r} ends at byte {end} of the data "
                f"section, which has only {data_size} bytes (an interrupted copy or write?)"
            )
    expected = max(ends.values(), default=0)
    if expected != data_size:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: {data_size - expected} unexpected bytes after the "
            "last tensor"
        )
    return meta


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint; raises :class:`CheckpointError` naming any damage."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    meta = _read_header(path)
    try:
        tensors = mx.load(str(path), format="safetensors")
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has a corrupt tensor table: {e}") from None
    _verify_digest(path, meta, tensors)
    try:
        checksums = json.loads(meta["crc32"])
        state = json.loads(meta["state"])
    except (KeyError, TypeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"checkpoint {path} has corrupt metadata: {e!r}") from None
    if not (isinstance(checksums, dict) and isinstance(state, dict)):
        raise CheckpointError(f"checkpoint {path} has corrupt metadata: state or crc32 malformed")
    try:
        cfg = parse_stored_config(meta.get("config", ""))
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    if set(checksums) != set(tensors):
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its tensor list does not match its checksum list "
            f"(differing: {sorted(set(checksums) ^ set(tensors))})"
        )
    bad = [name for name, array in tensors.items() if _crc32(array) != checksums[name]]
    if bad:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: tensor(s) {', '.join(sorted(bad))} fail their CRC-32 "
            "check (bit rot or a damaged copy); use another checkpoint"
        )
    return Checkpoint(path=path, tensors=tensors, cfg=cfg, state=state)


def _verify_digest(path: Path, meta: Mapping[str, Any], tensors: Mapping[str, mx.array]) -> None:
    if int(meta["version"]) == 1 and "digest" not in meta:
        log.warning(
            "checkpoint %s predates metadata checksums (format version 1): its config, counters "
            "and random states cannot be verified. The next checkpoint a resumed run writes "
            "has them.",
            path,
        )
        return
    if meta.get("digest") != _metadata_digest(meta, tensors) or int(meta["version"]) == 1:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its metadata (config, counters, random states, "
            "top-k map or tensor table) fails its SHA-256 check (bit rot or a damaged or edited "
            "copy); use another checkpoint"
        )


# ---------------------------------------------------------------------------------------------
# Modules, optimizers and RNG state
# ---------------------------------------------------------------------------------------------


def module_tensors(module: nn.Module, prefix: str) -> dict[str, mx.array]:
    """Every array of ``module`` (trainable or frozen) as ``{prefix.name: array}``."""
    return {f"{prefix}.{k}": v for k, v in tree_flatten(module.parameters())}


def _normalizer_paths(module: nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if isinstance(m, FittedModule)]


def load_module(module: nn.Module, tensors: Mapping[str, mx.array], what: str) -> None:
    """Load ``{name: array}`` into ``module`` strictly.

    Normalizers are rebuilt from their entries first (a fresh policy's normalizer is empty until
    fitted). Every other name must exist in the module with the same shape; all missing,
    unexpected and mis-shaped names are reported together in one
    :class:`CheckpointMismatchError`.
    """
    tensors = dict(tensors)
    for norm_path in _normalizer_paths(module):
        head = f"{norm_path}." if norm_path else ""
        entries = {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head + "params_")}
        if not entries:
            continue
        normalizer = module if not norm_path else _submodule(module, norm_path)
        normalizer.load_state_dict(entries)
        for k in entries:
            del tensors[head + k]

    current = dict(tree_flatten(module.parameters()))
    normalizer_heads = tuple(f"{p}." if p else "" for p in _normalizer_paths(module))
    current = {
        k: v
        for k, v in current.items()
        if not (normalizer_heads and k.startswith(normalizer_heads))
    }
    missing = sorted(current.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - current.keys())
    shapes = sorted(
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in current.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    )
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(_mismatch_message(what, missing, unexpected, shapes))
    module.update(tree_unflatten([(k, v.astype(current[k].dtype)) for k, v in tensors.items()]))


def _submodule(module: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        module = module[int(part)] if isinstance(module, list) else module[part]
    return module


def _mismatch_message(
    what: str, missing: list[str], unexpected: list[str], shapes: list[str], limit: int = 20
) -> str:
    def section(title: str, items: list[str]) -> str:
        shown = "\n    ".join(items[:limit])
        more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
        return f"\n  {title} ({len(items)}):\n    {shown}{more}"

    text = f"checkpoint does not fit the {what}:"
    if missing:
        text += section("missing from the checkpoint", missing)
    if unexpected:
        text += section("in the checkpoint but not in the model", unexpected)
    if shapes:
        text += section("shape mismatch", shapes)
    return text


def optimizer_tensors(optimizer: optim.Optimizer, prefix: str = "optimizer") -> dict[str, mx.array]:
    """The optimizer state (step, learning rate, moments) as ``{prefix.name: array}``."""
    return {f"{prefix}.{k}": v for k, v in tree_flatten(optimizer.state)}


def load_optimizer(
    optimizer: optim.Optimizer,
    tensors: Mapping[str, mx.array],
    parameters: Mapping,
    moments: bool = True,
) -> None:
    """Restore optimizer state saved by :func:`optimizer_tensors` (prefix removed).

    ``parameters`` are the trainable parameters the optimizer updates; the state is checked
    against a freshly initialized one, so a mismatch names its keys instead of failing later.
    ``moments=False``: ``tensors`` holds only the scalars (step, learning rates) and the
    per-parameter state starts afresh, as from a ``training.debug`` checkpoint.
    """
    optimizer.init(parameters)
    reference = dict(tree_flatten(optimizer.state))
    if not moments:
        tensors = {**{k: v for k, v in reference.items() if v.ndim > 0}, **tensors}
    missing = sorted(reference.keys() - tensors.keys())
    # Scalars a fresh optimizer lacks are schedule bookkeeping (e.g. the LR scheduler's
    # ``initial_lr``), not per-parameter state.
    unexpected = sorted(k for k in tensors.keys() - reference.keys() if tensors[k].ndim > 0)
    shapes = sorted(
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in reference.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    )
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(_mismatch_message("optimizer", missing, unexpected, shapes))
    state = tree_unflatten(
        [(k, v.astype(reference[k].dtype) if k in reference else v) for k, v in tensors.items()]
    )
    # Update in place: compiled training steps hold a reference to this state tree.
    _update_tree(optimizer.state, state)


def _update_tree(dst: Any, src: Any) -> None:
    items = src.items() if isinstance(src, dict) else enumerate(src)
    for key, value in items:
        if isinstance(value, mx.array):
            dst[key] = value
        else:
            _update_tree(dst[key], value)


def rng_state() -> tuple[dict[str, mx.array], dict[str, Any]]:
    """Snapshot numpy's, Python's and MLX's global generators: ``(tensors, json_state)``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    tensors = {
        "rng.numpy": mx.array(np.asarray(keys, dtype=np.uint32)),
        "rng.python": mx.array(np.asarray(internal, dtype=np.uint32)),
        "rng.mlx": mx.array(mx.random.state[0]),
    }
    state = {
        "numpy": [kind, int(pos), int(has_gauss), float(cached)],
        "python": [version, gauss_next],
    }
    return tensors, state


def restore_rng(tensors: Mapping[str, mx.array], state: Mapping[str, Any]) -> None:
    """Restore the generators from :func:`rng_state` output."""
    kind, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(tensors["rng.numpy"]), pos, has_gauss, cached))
    version, gauss_next = state["python"]
    internal = tuple(int(x) for x in np.array(tensors["rng.python"]).tolist())
    random.setstate((version, internal, gauss_next))
    # In place: compiled functions capture MLX's global random state by reference.
    mx.random.state[0][...] = tensors["rng.mlx"]


# ---------------------------------------------------------------------------------------------
# Config comparison
# ---------------------------------------------------------------------------------------------

# Keys that decide the shapes of what a checkpoint holds.
STRUCTURAL_KEYS = ("policy", "shape_meta", "task.shape_meta", "obs_dim", "action_dim")


def config_diff(
    saved: DictConfig, current: DictConfig, keys: Iterable[str] = STRUCTURAL_KEYS
) -> list[str]:
    """``'key: saved -> current'`` for every leaf under ``keys`` that differs."""
    out: list[str] = []
    for key in keys:
        a = OmegaConf.select(saved, key, default=None)
        b = OmegaConf.select(current, key, default=None)
        a = OmegaConf.to_container(a, resolve=True) if OmegaConf.is_config(a) else a
        b = OmegaConf.to_container(b, resolve=True) if OmegaConf.is_config(b) else b
        _diff(a, b, key, out)
    return out


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(a.keys() | b.keys(), key=str):
            _diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{path}.{k}", out)
    elif a != b:
        out.append(f"{path}: {a!r} -> {b!r}")


# ---------------------------------------------------------------------------------------------
# Top-k
# ---------------------------------------------------------------------------------------------


# What one replacement field of ``checkpoint.topk.format_str`` may become: a formatted number
# (digits, sign, point, exponent, padding, thousands separators, percent), nan or inf.
_TOPK_FIELD = r"[-+ ]*(?:[0-9][0-9.,_eE+\- ]*%?|nan%?|inf%?)"


def _topk_name_pattern(format_str: str) -> re.Pattern[str]:
    """The file names ``format_str`` formats numbers into: its literal text, numbers between."""
    if Path(format_str).name != format_str or "\\" in format_str:
        raise ValueError(
            f"checkpoint.topk.format_str={format_str!r} must be a file name (checkpoints are "
            "saved in the run's checkpoints/ folder), with no folder in it"
        )
    parts, fields = [], 0
    for literal, field, _, _ in Formatter().parse(format_str):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append(_TOPK_FIELD)
            fields += 1
    if not fields:
        raise ValueError(
            f"checkpoint.topk.format_str={format_str!r} has no {{field}}: every top-k "
            "checkpoint would get the same name"
        )
    return re.compile("".join(parts), re.IGNORECASE)


class TopKCheckpointManager:
    """Keep the ``k`` best checkpoints by ``monitor_key`` (upstream's manager, resumable).

    ``get_ckpt_path(metrics)`` returns the path to save the new checkpoint under, deleting the
    one it displaces, or None when the new one does not make the top ``k``.

    The bookkeeping holds file names, not paths: a run folder that is moved or copied keeps
    working on its own files. Only files in ``save_dir`` whose names ``format_str`` can produce
    are ever deleted; a restored entry that is anything else (an absolute path from an older
    checkpoint is reduced to its name) is dropped with a warning and its file left alone.
    """

    def __init__(
        self,
        save_dir: str | Path,
        monitor_key: str,
        mode: str = "min",
        k: int = 1,
        format_str: str = "epoch={epoch:03d}-train_loss={train_loss:.3f}.ckpt",
    ):
        if mode not in ("max", "min"):
            raise ValueError(f"checkpoint.topk.mode must be 'max' or 'min', got {mode!r}")
        if k < 0:
            raise ValueError(f"checkpoint.topk.k must be >= 0, got {k}")
        self.save_dir = Path(save_dir)
        self.monitor_key = monitor_key
        self.mode = mode
        self.k = k
        self.format_str = format_str
        self.name_pattern = _topk_name_pattern(format_str)
        self.name_value_map: dict[str, float] = {}

    def get_ckpt_path(self, data: Mapping[str, Any]) -> str | None:
        if self.k == 0:
            return None
        value = float(data[self.monitor_key])
        name = self.format_str.format(**data)
        if not self.name_pattern.fullmatch(name):
            raise ValueError(
                f"checkpoint.topk.format_str={self.format_str!r} gave {name!r}: its fields must "
                "be numbers (epoch, global_step or a logged metric)"
            )
        if len(self.name_value_map) < self.k:
            self.name_value_map[name] = value
            return str(self.save_dir / name)
        ranked = sorted(self.name_value_map.items(), key=lambda kv: kv[1])
        if self.mode == "max":
            worst_name, worst_value = ranked[0]
            better = value > worst_value
        else:
            worst_name, worst_value = ranked[-1]
            better = value < worst_value
        if not better:
            return None
        del self.name_value_map[worst_name]
        self.name_value_map[name] = value
        # a plain name matching the format (checked on entry): a file of this folder only
        (self.save_dir / worst_name).unlink(missing_ok=True)
        return str(self.save_dir / name)

    def state_dict(self) -> dict[str, Any]:
        return {"name_value_map": dict(self.name_value_map)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        entries = state
        if isinstance(state, Mapping):
            # "path_value_map": checkpoints before format version 2 kept absolute paths
            entries = state.get("name_value_map", state.get("path_value_map")) or {}
        self.name_value_map = {}
        if not isinstance(entries, Mapping):
            log.warning("top-k bookkeeping is not a mapping (%r): starting it afresh", entries)
            return
        for entry, value in entries.items():
            entry = str(entry)
            name = Path(entry).name if Path(entry).is_absolute() else entry
            if self.name_pattern.fullmatch(name) and isinstance(value, int | float):
                self.name_value_map[name] = float(value)
            else:
                log.warning(
                    "top-k bookkeeping: ignoring entry %r (value %r): not a name "
                    "checkpoint.topk.format_str=%r gives to a file in %s; that file, if any, "
                    "is left alone",
                    entry,
                    value,
                    self.format_str,
                    self.save_dir,
                )
