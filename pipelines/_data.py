"""Data options shared by the entry points, and turning them into train/dev/test frames.

Sources, in order: ``--train/--dev/--test`` files (used as given; a text on both sides of a split is
warned about), ``--data`` (one file, split by the project so no text crosses a split), or nothing: the
embedded demo (written by :mod:`components.data.demo` into the output folder).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import mlflow
import pandas as pd

from components.data.contract import DataError, DataSpec, read_pairs
from components.data.demo import write_demo
from components.data.splitting import check_leakage, split_grouped
from components.data.writing import fingerprint
from pipelines._options import option

logger = logging.getLogger(__name__)
SPLITS = ("train", "dev", "test")


def _label_range(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected two numbers 'lo,hi' such as 0,5; got {value!r}") from None
    if not lo < hi:
        raise click.BadParameter(f"need lo < hi, got {value!r}")
    return lo, hi


def data_options(func: Callable) -> Callable:
    """Click options of the data contract (see docs/data.md)."""
    options = [
        option("--data", type=click.Path(dir_okay=False), default=None,
                     help="One pair file (CSV, TSV, JSONL or Parquet) that flipkd splits into train/dev/test."),
        option("--train", "train_path", type=click.Path(dir_okay=False), default=None,
                     help="Training pair file (give --dev and --test with it)."),
        option("--dev", "dev_path", type=click.Path(dir_okay=False), default=None,
                     help="Dev pair file: thresholds and every choice are made on it."),
        option("--test", "test_path", type=click.Path(dir_okay=False), default=None,
                     help="Test pair file: only for final numbers."),
        option("--text-a-col", default="text_a", show_default=True, help="Column of the first text."),
        option("--text-b-col", default="text_b", show_default=True, help="Column of the second text."),
        option("--label-col", default="label", show_default=True, help="Column of the gold label."),
        option("--label-range", default="0,1", show_default=True, callback=_label_range,
                     help="Declared label range 'lo,hi' (graded labels, e.g. 0,5)."),
        option("--match-threshold", type=float, default=None,
                     help="Original-scale label at or above which a pair matches (default: middle of the range)."),
        option("--dev-fraction", type=click.FloatRange(0, 0.5), default=0.15, show_default=True,
                     help="Share of pairs for dev when flipkd splits --data."),
        option("--test-fraction", type=click.FloatRange(0, 0.5), default=0.15, show_default=True,
                     help="Share of pairs for test when flipkd splits --data."),
    ]
    for opt in reversed(options):
        func = opt(func)
    return func


@dataclass
class DataArgs:
    data: str | None
    train_path: str | None
    dev_path: str | None
    test_path: str | None
    text_a_col: str
    text_b_col: str
    label_col: str
    label_range: tuple[float, float]
    match_threshold: float | None
    dev_fraction: float
    test_fraction: float

    @classmethod
    def pop(cls, kwargs: dict) -> DataArgs:
        return cls(**{name: kwargs.pop(name) for name in cls.__dataclass_fields__})

    def spec(self) -> DataSpec:
        return DataSpec(self.text_a_col, self.text_b_col, self.label_col, self.label_range, self.match_threshold)


def load_splits(args: DataArgs, work_dir: Path, seed: int) -> dict[str, pd.DataFrame]:
    """Train/dev/test frames from the options (see the module docstring)."""
    given = [args.train_path, args.dev_path, args.test_path]
    if any(given):
        if not all(given[:2]):
            raise DataError("--train needs --dev too (and --test for final numbers)", field="--dev")
        spec = args.spec()
        splits = {name: read_pairs(path, spec) for name, path in zip(SPLITS, given, strict=True) if path}
        check_leakage(splits)
        return splits
    if args.data:
        frame = read_pairs(args.data, args.spec())
        splits = split_grouped(frame, args.dev_fraction, args.test_fraction, seed=seed)
        for name in splits:
            splits[name].attrs.update(frame.attrs)
            splits[name].attrs["source"] = f"{frame.attrs.get('source', args.data)}#{name}"
        return splits
    paths = write_demo(work_dir / "demo")
    return {name: read_pairs(path) for name, path in paths.items()}


def data_fingerprint(splits: dict[str, pd.DataFrame]) -> str:
    digest = hashlib.sha256()
    for name in SPLITS:
        if name in splits:
            digest.update(f"{name}:{fingerprint(splits[name])};".encode())
    return digest.hexdigest()[:16]


def log_splits(splits: dict[str, pd.DataFrame]) -> str:
    """Dataset lineage with ``mlflow.log_input`` and the data fingerprint tag; returns the fingerprint."""
    for name, frame in splits.items():
        columns = [c for c in ("text_a", "text_b", "label", "match") if c in frame]
        dataset = mlflow.data.from_pandas(frame[columns], source=str(frame.attrs.get("source", "unknown")),
                                          name=f"{name}-{fingerprint(frame)}")
        mlflow.log_input(dataset, context=name)
        mlflow.log_metric(f"data_{name}_pairs", len(frame))
    fp = data_fingerprint(splits)
    mlflow.set_tag("flipkd.data_fingerprint", fp)
    return fp


def with_data_args(func: Callable) -> Callable:
    """Collect the data options of :func:`data_options` into one ``data_args`` keyword."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        kwargs["data_args"] = DataArgs.pop(kwargs)
        return func(*args, **kwargs)

    return wrapper
