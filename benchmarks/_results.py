"""Each benchmark rewrites only its own section of ``benchmarks/RESULTS.md``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# flipkd benchmark results\n\nEach section is written by the benchmark named in it; do not edit by hand.\n"


def write_section(name: str, body: str) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = RESULTS_MD.read_text(encoding="utf-8") if RESULTS_MD.exists() else HEADER
    block = f"{start}\n## {name}\n\n{body.strip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    fd, tmp = tempfile.mkstemp(dir=RESULTS_MD.parent, prefix=".RESULTS.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, RESULTS_MD)
