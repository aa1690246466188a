"""Finished cells of a long benchmark, stored the moment each finishes, and a time budget to stop before.

A benchmark longer than a sitting runs as many cells as its budget allows, stores each finished cell at once
(one JSON file, rewritten atomically, so a kill loses at most the running cell), and a later run with the same
settings skips what is stored and continues where the earlier one stopped. A cell's key names its dataset,
variant, seed and settings hash, so cells of other settings never mix.
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


def cell_key(dataset: str, variant: str, seed: int, settings_hash: str) -> str:
    return f"{dataset}/{variant}/seed{seed}/{settings_hash}"


class CellStore:
    """``{key: record}`` in one JSON file; :meth:`put` rewrites it atomically after every cell."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.cells: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.cells = dict(data.get("cells", {}))

    def __contains__(self, key: str) -> bool:
        return key in self.cells

    def get(self, key: str) -> dict[str, Any] | None:
        return self.cells.get(key)

    def put(self, key: str, record: dict[str, Any]) -> None:
        self.cells[key] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        # one cell per line, compact: a new cell is a one-line diff, and the headline's scores (every dev and test
        # pair of 70+ runs) stay well under the repository's 2 MiB per file
        lines = [f"{json.dumps(key)}: {json.dumps(self.cells[key], sort_keys=True, separators=(',', ':'))}"
                 for key in sorted(self.cells)]
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write('{"cells": {\n' + ",\n".join(lines) + "\n}}\n")
        os.replace(temp, self.path)


class Budget:
    """Wall time left of ``seconds``; :meth:`allows` says whether a piece of work of a given estimate still fits."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds, self.started = seconds, time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def allows(self, estimate: float) -> bool:
        return self.seconds is None or self.elapsed() + estimate <= self.seconds
