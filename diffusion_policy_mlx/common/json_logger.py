"""``logs.json.txt``: one JSON object per line, appended across resumed runs (upstream's JsonLogger)."""

from __future__ import annotations

import copy
import json
import numbers
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Self


def _is_number(key: str, value: Any) -> bool:
    return isinstance(value, numbers.Number)


def read_json_log(path: str | Path, required_keys: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Read a JSON-per-line log, stopping at an incomplete last line (a crash mid-write).

    With ``required_keys``, keep only records that contain at least one of them.
    """
    records = []
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break
            if not line.strip():
                continue
            record = json.loads(line)
            if not required_keys or any(k in record for k in required_keys):
                records.append(record)
    return records


class JsonLogger:
    """Append flat metric dicts to a JSON-lines file, one line per ``log`` call.

    Opening an existing file keeps its complete lines and drops a trailing partial line left by
    a crash. With ``resume_step`` it also drops records whose ``global_step`` is at or past that
    step: a resumed run re-logs those steps, so the file stays one line per step.
    Only numeric values are written unless ``filter_fn(key, value)`` says otherwise.
    """

    def __init__(
        self,
        path: str | Path,
        filter_fn: Callable[[str, Any], bool] | None = None,
        resume_step: int | None = None,
    ):
        self.path = Path(path)
        self.filter_fn = filter_fn or _is_number
        self.resume_step = resume_step
        self.file: IO[str] | None = None
        self.last_log: dict[str, Any] | None = None

    def start(self) -> None:
        kept: list[str] = []
        if self.path.exists():
            for line in self.path.read_text().splitlines(keepends=True):
                if not line.endswith("\n"):
                    break
                if self.resume_step is not None and line.strip():
                    step = json.loads(line).get("global_step")
                    if step is not None and step >= self.resume_step:
                        break
                kept.append(line)
        if kept:
            self.last_log = json.loads(kept[-1]) if kept[-1].strip() else None
        # Rewrite only when something must go, so an intact log is never touched.
        if self.path.exists() and sum(map(len, kept)) != self.path.stat().st_size:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, self.path)
        self.file = open(self.path, "a", buffering=1)

    def stop(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self, data: dict[str, Any]) -> None:
        """Write the numeric entries of ``data`` as one JSON line (ints stay ints)."""
        if self.file is None:
            raise RuntimeError(
                f"JsonLogger({self.path}) is not started; use it as a context manager"
            )
        record: dict[str, Any] = {}
        for key, value in data.items():
            if not self.filter_fn(key, value):
                continue
            if isinstance(value, numbers.Integral):
                value = int(value)
            elif isinstance(value, numbers.Number):
                value = float(value)
            record[key] = value
        self.last_log = record
        self.file.write(json.dumps(record).replace("\n", "") + "\n")

    def get_last_log(self) -> dict[str, Any] | None:
        return copy.deepcopy(self.last_log)
