"""Finished cells of a long benchmark, stored the moment each finishes, and a time budget to stop before.

A benchmark longer than a sitting runs as many cells as its budget allows, stores each finished cell at once
(one JSON file, rewritten atomically, so a kill loses at most the running cell), and a later run with the same
settings skips what is stored and continues where the earlier one stopped. A cell's key names its dataset,
variant, seed and settings hash, so cells of other settings never mix. A cell longer than what is left of a budget
pauses at a training checkpoint (:class:`PausedCell` keeps what the next sitting needs to continue it).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any


def parse_budget(text: str) -> float:
    """Seconds of a budget such as ``150m``, ``2h``, ``2h30m``, ``90s`` or a bare number of minutes."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value) * 60
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", value)
    if not value or parts is None or not any(parts.groups()):
        raise ValueError(f"a budget such as 150m, 2h, 2h30m or 90s, got {text!r}")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def _write_atomically(target: Path, text: str) -> None:
    """``text`` into ``target`` through a temporary file beside it: a reader sees the old file or the new one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temp, target)


def cell_key(dataset: str, variant: str, seed: int, settings_hash: str) -> str:
    return f"{dataset}/{variant}/seed{seed}/{settings_hash}"


class CellStore:
    """``{key: record}`` in JSON, rewritten atomically after every cell (:meth:`put`).

    ``path`` is one file, or, with ``shard=True``, a folder of one subfolder per dataset holding one file per
    variant and settings hash (``banking77/flip_best-0d63d5e95559.json``: the seeds of one setting): a benchmark
    keeping every dev and test score of each run outgrows a file per dataset under the repository's 2 MiB limit.
    """

    def __init__(self, path: str | Path, *, shard: bool = False) -> None:
        self.path, self.shard = Path(path), shard
        self.cells: dict[str, dict[str, Any]] = {}
        files = sorted(self.path.glob("*/*.json")) if shard else [self.path]
        for file in files:
            if file.is_file():
                self.cells.update(json.loads(file.read_text(encoding="utf-8")).get("cells", {}))

    def __contains__(self, key: str) -> bool:
        return key in self.cells

    def get(self, key: str) -> dict[str, Any] | None:
        return self.cells.get(key)

    def file_of(self, key: str) -> Path:
        if not self.shard:
            return self.path
        dataset, variant, _, settings_hash = key.split("/")
        return self.path / dataset / f"{variant}-{settings_hash}.json"

    def put(self, key: str, record: dict[str, Any]) -> None:
        self.cells[key] = record
        target = self.file_of(key)
        # one cell per line, compact: a new cell is a one-line diff
        lines = [f"{json.dumps(k)}: {json.dumps(self.cells[k], sort_keys=True, separators=(',', ':'))}"
                 for k in sorted(self.cells) if self.file_of(k) == target]
        _write_atomically(target, '{"cells": {\n' + ",\n".join(lines) + "\n}}\n")


class Budget:
    """Wall time left of ``seconds``; :meth:`allows` says whether a piece of work of a given estimate still fits."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds, self.started = seconds, time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def deadline(self) -> float | None:
        """The budget's end as a ``time.monotonic()`` value (None: no budget)."""
        return None if self.seconds is None else self.started + self.seconds

    def allows(self, estimate: float) -> bool:
        return self.seconds is None or self.elapsed() + estimate <= self.seconds


class PausedCell:
    """A cell paused mid-training, recorded beside its training checkpoints (``<folder>/cell.json``): the MLflow run
    the next sitting reopens, the seconds run so far, the steps it paused at and its guard warnings so far."""

    FILE = "cell.json"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        path = self.folder / self.FILE
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        self.run_id: str | None = data.get("run_id")
        self.seconds: float = float(data.get("seconds", 0.0))
        self.paused_at: list[int] = [int(s) for s in data.get("paused_at", [])]
        self.guard_warnings: int = int(data.get("guard_warnings", 0))

    def pause(self, run_id: str, step: int, seconds: float, guard_warnings: int) -> None:
        """Record one more sitting that stopped at ``step`` after ``seconds``; written atomically."""
        self.run_id, self.seconds = run_id, self.seconds + seconds
        self.paused_at.append(int(step))
        self.guard_warnings += int(guard_warnings)
        _write_atomically(self.folder / self.FILE, json.dumps({"run_id": self.run_id, "seconds": self.seconds,
                                                               "paused_at": self.paused_at,
                                                               "guard_warnings": self.guard_warnings}))
