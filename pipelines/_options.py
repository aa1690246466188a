"""Click option helpers: every option also answers to its underscore spelling.

``mlflow run . -P w_sup=2`` passes an undeclared parameter as ``--w_sup 2``; the same option is
``--w-sup 2`` on the command line. Both reach the same Python name.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from pipelines._console import progress_callback

POSITIVE = click.FloatRange(min=0, min_open=True)
UNIT = click.FloatRange(0.0, 1.0)


def option(name: str, *more: str, **kwargs) -> Callable:
    names = [name, *more]
    alias = "--" + name[2:].replace("-", "_")
    if name.startswith("--") and "/" not in name and alias not in names:
        names.append(alias)
    kwargs.setdefault("show_default", True)
    return click.option(*names, **kwargs)


def common_options(func: Callable) -> Callable:
    """Options every entry point has: experiment, seed, cache folder, progress bars."""
    for opt in reversed([
        option("--experiment", default=None, show_default="$MLFLOW_EXPERIMENT_NAME, else flipkd",
               help="MLflow experiment of new runs. Under `mlflow run` MLflow files the run itself: use its "
                    "`--experiment-name`."),
        option("--seed", type=int, default=0, help="Seed of data splits, shuffling and initialisation."),
        option("--cache-dir", type=click.Path(file_okay=False), default=None,
               help="Cache of converted models and teacher embeddings (default $FLIPKD_CACHE_DIR or ~/.cache/flipkd)."),
        option("--progress/--no-progress", default=None, callback=progress_callback,
               show_default="on when stderr is a terminal", help="Progress bars on long work."),
    ]):
        func = opt(func)
    return func


class BlockCount(click.ParamType):
    """A number of transformer blocks, or ``all`` (returned as 0)."""

    name = "K|all"

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        if str(value).strip().lower() == "all":
            return 0
        try:
            count = int(value)
        except ValueError:
            self.fail(f"a number of blocks >= 1 or 'all', got {value!r}", param, ctx)
        if count < 1:
            self.fail(f"a number of blocks >= 1 or 'all', got {value!r}", param, ctx)
        return count
