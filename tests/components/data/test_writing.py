"""Writing pair tables: every format reads back to the same frame, a crash leaves no half file, the fingerprint."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from components.data import writing
from components.data.contract import DataError, pair_id, read_pairs
from components.data.writing import fingerprint, write_pairs


def _frame(n: int = 4) -> pd.DataFrame:
    rows = [(f"question {i}", f"answer {i}, with a comma", float(i % 2)) for i in range(n)]
    df = pd.DataFrame(rows, columns=["text_a", "text_b", "label"])
    df["match"] = df["label"].astype(np.int64)
    df["pair_id"] = [pair_id(a, b) for a, b in zip(df["text_a"], df["text_b"], strict=True)]
    df["group"] = ["g0", "g1", "g0", "g1"][:n]
    return df


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.json", "pairs.csv", "pairs.tsv", "pairs.parquet"])
def test_write_read_round_trip(tmp_path, name):
    df = _frame()
    path = tmp_path / "out" / name
    write_pairs(df, path)
    back = read_pairs(path)
    pd.testing.assert_frame_equal(back, df)
    assert fingerprint(back) == fingerprint(df)
    assert sorted(p.name for p in path.parent.iterdir()) == [name]  # no temp file left behind


def test_jsonl_is_one_utf8_object_per_line(tmp_path):
    df = _frame(2)
    df.loc[0, "text_a"] = "café ☕"
    path = tmp_path / "p.jsonl"
    write_pairs(df, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["text_a"] == "café ☕"


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "p.jsonl"
    write_pairs(_frame(2), path)
    before = path.read_bytes()

    def crash(_path):
        raise OSError("disk full")

    monkeypatch.setattr(writing, "_fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        write_pairs(_frame(4), path)
    assert path.read_bytes() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["p.jsonl"]  # and the temp file is gone


def test_write_rejects_unknown_format_and_tsv_unsafe_text(tmp_path):
    with pytest.raises(DataError, match="unknown file format"):
        write_pairs(_frame(), tmp_path / "p.txt")
    df = _frame()
    df.loc[1, "text_b"] = "tab\there"
    with pytest.raises(DataError, match="TSV cannot store") as info:
        write_pairs(df, tmp_path / "p.tsv")
    assert info.value.field == "text_b"
    assert list(tmp_path.iterdir()) == []


def test_fingerprint_is_stable_and_sensitive():
    df = _frame()
    assert fingerprint(df) == "4d6d87006edf61ad"  # fixed value: the same across processes and runs
    assert fingerprint(df.iloc[::-1]) != fingerprint(df)
    changed = df.copy()
    changed.loc[0, "label"] = 0.5
    assert fingerprint(changed) != fingerprint(df)
    assert fingerprint(df.drop(columns=["group"])) == fingerprint(df)  # only text_a, text_b, label count
