"""Each benchmark rewrites only its own section of ``benchmarks/RESULTS.md``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
ROOT = Path(__file__).resolve().parent.parent  # README.md and docs/*.md quote sections between markers
HEADER = "# flipkd benchmark results\n\nEach section is written by the benchmark named in it; do not edit by hand.\n"


def _replace_between(text: str, start: str, end: str, block: str) -> str | None:
    if start in text and end in text:
        return text[: text.index(start)] + block + text[text.index(end) + len(end):]
    return None


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def quoting_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def write_section(name: str, body: str) -> None:
    """Rewrite section ``name`` of RESULTS.md, and its quote wherever the README or a page of docs/ has one."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = RESULTS_MD.read_text(encoding="utf-8") if RESULTS_MD.exists() else HEADER
    block = f"{start}\n## {name}\n\n{body.strip()}\n{end}"
    updated = _replace_between(text, start, end, block)
    _write_atomically(RESULTS_MD, updated if updated is not None else text.rstrip("\n") + "\n\n" + block + "\n")
    for path in quoting_files():
        if not path.exists():
            continue
        page = path.read_text(encoding="utf-8")
        quoted = _replace_between(page, f"<!-- quote:{name} -->", f"<!-- /quote:{name} -->",
                                  f"<!-- quote:{name} -->\n{body.strip()}\n<!-- /quote:{name} -->")
        if quoted is not None and quoted != page:
            _write_atomically(path, quoted)
