"""What an entry point prints besides its summary: warnings in one line, each once, above the progress bars.

Python's warnings print their source line, and both they and log records land in the middle of a tqdm bar;
a chain (``main``) runs every step in one process, so a warning about the data (split leakage) came once per
step. Progress bars redraw with carriage returns, which fill a log file: they are on only when stderr is a
terminal, unless ``--progress`` asks for them.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import click
from tqdm.auto import tqdm

_seen: set[str] = set()


def _say_once(text: str) -> None:
    if text not in _seen:
        _seen.add(text)
        tqdm.write(f"warning: {text}", file=sys.stderr)


class _OnceAboveBars(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _say_once(record.getMessage())


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    _say_once(str(message))


def setup_console() -> None:
    """One-line, deduplicated warnings from flipkd's own code and from Python's ``warnings`` (idempotent).

    A top-level entry point starts with a clean slate; the steps of a chain (inside its run) share it.
    """
    import mlflow

    if mlflow.active_run() is None:
        _seen.clear()
    for name in ("components", "pipelines", "benchmarks"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, _OnceAboveBars) for h in logger.handlers):
            logger.addHandler(_OnceAboveBars(logging.WARNING))
            logger.propagate = False
    warnings.showwarning = _show_warning


def progress_callback(ctx: click.Context, param: click.Parameter, value: bool | None) -> bool:
    """``--progress/--no-progress``; unset: on only when stderr is a terminal (no redraws in a log file)."""
    on = sys.stderr.isatty() if value is None else value
    if not on:  # transformers' and the hub's own bars (loading weights) too
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return on
