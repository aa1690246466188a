"""Writing a canonical pair table (:mod:`components.data.contract`) atomically, and the fingerprint that names it.

A crash never leaves half a file: the table is written to a temporary file in the same folder, fsynced and
``os.replace``-d into its name. The format follows the extension, as :func:`~components.data.contract.read_pairs`
reads it, so a written file reads back to the same frame.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.data.contract import DataError, _format_of


def write_pairs(df: pd.DataFrame, path: str | Path) -> None:
    """Write atomically (temp file in the same folder, then ``os.replace``): a crash never leaves half a file.

    The format follows the extension as in :func:`read_pairs`; JSONL (UTF-8, one object per line) is the
    recommended one. The folder is created if needed.
    """
    path = Path(path)
    fmt = _format_of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if fmt == "jsonl":
            _write_jsonl(df, tmp)
        elif fmt == "parquet":
            df.to_parquet(tmp, index=False)
        elif fmt == "csv":
            df.to_csv(tmp, index=False, encoding="utf-8")
        else:
            _check_tsv_safe(df, path)
            df.to_csv(tmp, sep="\t", index=False, quoting=csv.QUOTE_NONE, encoding="utf-8")
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_jsonl(df: pd.DataFrame, path: Path) -> None:
    with open(path, "x", encoding="utf-8", newline="\n") as out:
        for record in df.to_dict(orient="records"):
            out.write(json.dumps(record, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, pd.Timestamp):
        return obj.isoformat()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def _check_tsv_safe(df: pd.DataFrame, path: Path) -> None:
    for column in df.columns:
        values = df[column]
        if pd.api.types.is_string_dtype(values) and values.astype(str).str.contains(r"[\t\r\n]").any():
            raise DataError("a text holds a tab or a newline, which TSV cannot store; write .jsonl instead",
                            file=str(path), field=str(column))


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def fingerprint(df: pd.DataFrame) -> str:
    """A short hash of the canonical rows (text_a, text_b, label) in order, logged so a run names its exact data."""
    digest = hashlib.sha256()
    for a, b, label in zip(df["text_a"], df["text_b"], df["label"], strict=True):
        digest.update(json.dumps([a, b, float(label)], ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()[:16]
