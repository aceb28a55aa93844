"""``logs.json.txt``: one JSON object per line, appended across resumed runs (upstream's JsonLogger)."""

from __future__ import annotations

import copy
import json
import logging
import numbers
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Self

log = logging.getLogger(__name__)


def _is_number(key: str, value: Any) -> bool:
    return isinstance(value, numbers.Number)


def _complete_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of every newline-terminated line: an unterminated last line is
    a crash mid-write and never a whole record."""
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        if not line.endswith("\n"):
            return
        yield number, line


def _parse(line: str) -> dict[str, Any] | None:
    """The record on ``line``, or None when the line is damaged (not a JSON object with an
    integer ``global_step``, if any)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    step = record.get("global_step")
    if step is not None and not isinstance(step, int):
        return None
    return record


def _warn_damaged(path: Path, line_numbers: list[int], action: str) -> None:
    if line_numbers:
        shown = ", ".join(map(str, line_numbers[:10])) + (" ..." if len(line_numbers) > 10 else "")
        log.warning(
            "%s: %d damaged line(s) (not a JSON record: line %s) %s",
            path,
            len(line_numbers),
            shown,
            action,
        )


def read_json_log(path: str | Path, required_keys: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Read a JSON-per-line log, stopping at an incomplete last line (a crash mid-write) and
    skipping damaged lines with one warning.

    With ``required_keys``, keep only records that contain at least one of them.
    """
    path = Path(path)
    records, damaged = [], []
    for number, line in _complete_lines(path.read_text()):
        if not line.strip():
            continue
        record = _parse(line)
        if record is None:
            damaged.append(number)
        elif not required_keys or any(k in record for k in required_keys):
            records.append(record)
    _warn_damaged(path, damaged, "skipped")
    return records


def set_aside(path: Path) -> Path:
    """Rename ``path`` to the first free ``<name>.1``, ``<name>.2``, ...; returns the new path."""
    n = 1
    while (target := path.with_name(f"{path.name}.{n}")).exists():
        n += 1
    path.rename(target)
    return target


class JsonLogger:
    """Append flat metric dicts to a JSON-lines file, one line per ``log`` call.

    Opening an existing file keeps its complete lines and drops a trailing partial line left by
    a crash, and damaged lines, with a warning. With ``resume_step`` it also drops records whose
    ``global_step`` is at or past that step: a resumed run re-logs those steps, so the file
    stays one line per step. With ``fresh`` (a run that starts at step 0) an existing file is
    another run's: it is renamed to ``<name>.1`` (or the next free number) and a new file begun.
    Only numeric values are written unless ``filter_fn(key, value)`` says otherwise.
    """

    def __init__(
        self,
        path: str | Path,
        filter_fn: Callable[[str, Any], bool] | None = None,
        resume_step: int | None = None,
        fresh: bool = False,
    ):
        self.path = Path(path)
        self.filter_fn = filter_fn or _is_number
        self.resume_step = resume_step
        self.fresh = fresh
        self.file: IO[str] | None = None
        self.last_log: dict[str, Any] | None = None

    def start(self) -> None:
        if self.fresh and self.path.exists() and self.path.stat().st_size > 0:
            old = set_aside(self.path)
            log.warning(
                "%s holds an earlier run's log and this run starts at step 0: the old log is "
                "kept as %s and a new one begins",
                self.path,
                old,
            )
        if self.path.exists():
            self._keep_whole_records()
        self.file = open(self.path, "a", buffering=1)

    def _keep_whole_records(self) -> None:
        """Drop a partial last line, damaged lines and (resuming) lines at or past
        ``resume_step``; the file is rewritten only when something must go."""
        kept: list[str] = []
        damaged: list[int] = []
        for number, line in _complete_lines(self.path.read_text()):
            if not line.strip():
                kept.append(line)
                continue
            record = _parse(line)
            if record is None:
                damaged.append(number)
                continue
            step = record.get("global_step")
            if self.resume_step is not None and step is not None and step >= self.resume_step:
                break
            kept.append(line)
            self.last_log = record
        _warn_damaged(self.path, damaged, "dropped from the log")
        if sum(map(len, kept)) != self.path.stat().st_size:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, self.path)

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
