"""The data contract: every bad input gives one DataError naming file, row and field; good inputs are canonical."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.data import contract as data
from components.data.contract import DataError, DataSpec, read_pairs

HEADER = "text_a,text_b,label\n"
GOOD_ROWS = "How do I cancel my order?,How can I cancel an order?,1\n"


def _jsonl(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def _pair(**overrides) -> dict:
    return {"text_a": "a question", "text_b": "another question", "label": 1, **overrides}


# One table, one body: (case id, file name, content, message pattern, row, field).
# content: str/bytes are written as is, a DataFrame is written as Parquet, "DIR" makes a folder, None nothing.
BAD_INPUT_CASES = [
    ("missing_column", "d.csv", "text_a,label\nhello,1\n",
     r"column 'text_b' not found; columns found: 'text_a', 'label'\. .*--text-b-col", None, "text_b"),
    ("misnamed_column", "d.csv", "Text_A,text_b,label\nhello,there,1\n",
     r"column 'text_a' not found \(did you mean 'Text_A'\?\).*--text-a-col", None, "text_a"),
    ("renamed_column_absent", "d.csv", "sentence1,sentence2,score\nhello,there,1\n",
     r"column 'text_a' not found; columns found: 'sentence1', 'sentence2', 'score'", None, "text_a"),
    ("empty_file", "d.csv", b"", r"the file is empty \(0 bytes\)", None, None),
    ("blank_file", "d.csv", "\n\n", r"the file is empty \(no header line\)", None, None),
    ("header_only", "d.csv", HEADER, r"the file has a header but no data rows", None, None),
    ("empty_jsonl", "d.jsonl", "\n \n", r"the file holds no data rows", None, None),
    ("empty_text_csv_cell", "d.csv", HEADER + GOOD_ROWS + "hello,,1\n", r"the text is empty", 3, "text_b"),
    ("empty_text_jsonl", "d.jsonl", _jsonl(_pair(text_a="")), r"the text is empty", 1, "text_a"),
    ("whitespace_only_text", "d.csv", HEADER + '"   ",b,1\n', r"the text is only whitespace", 2, "text_a"),
    ("zero_width_only_text_csv", "d.csv", HEADER + GOOD_ROWS + "\u200b\u200b,b,1\n", r"invisible characters", 3,
     "text_a"),
    ("invisible_only_text_jsonl", "d.jsonl", _jsonl(_pair(text_b="\ufeff \u2060\u200d\ufe0f\u3164\u00ad")),
     r"only whitespace or invisible", 1, "text_b"),
    ("null_text_jsonl", "d.jsonl", _jsonl(_pair(), _pair(text_b=None)), r"the text is missing \(null\)", 2, "text_b"),
    ("absent_text_jsonl", "d.jsonl", _jsonl(_pair(), {"text_a": "x", "label": 1}),
     r"the field is absent from this row", 2, "text_b"),
    ("non_string_text_jsonl", "d.jsonl", _jsonl(_pair(text_a=5)), r"the text must be a string, found int \(5\)", 1,
     "text_a"),
    ("label_out_of_range", "d.csv", HEADER + GOOD_ROWS + "a,b,7\n",
     r"label 7 is outside the declared range \[0, 1\]", 3, "label"),
    ("label_negative", "d.jsonl", _jsonl(_pair(label=-0.5)), r"label -0\.5 is outside the declared range", 1, "label"),
    ("label_non_numeric", "d.csv", HEADER + "a,b,yes\n", r"label 'yes' is not a number.*yes/no to 1/0", 2, "label"),
    ("label_nan_csv", "d.csv", HEADER + "a,b,nan\n", r"the label is missing \('nan'\)", 2, "label"),
    ("label_empty_csv_cell", "d.csv", HEADER + "a,b,\n", r"the label is missing \('empty cell'\)", 2, "label"),
    ("label_nan_jsonl", "d.jsonl", '{"text_a": "a", "text_b": "b", "label": NaN}\n', r"the label is missing \(NaN\)",
     1, "label"),
    ("label_null_jsonl", "d.jsonl", _jsonl(_pair(label=None)), r"the label is missing \(null\)", 1, "label"),
    ("label_string_jsonl", "d.jsonl", _jsonl(_pair(label="1")), r"the label must be a number, found str", 1, "label"),
    ("non_utf8_bytes", "d.csv", HEADER.encode() + b"caf\xe9,b,1\n",
     r"is not valid UTF-8: byte 0xe9 at byte offset 23 \(line 2\)", 2, None),
    ("ragged_row", "d.csv", HEADER + GOOD_ROWS + "a,b\n", r"the row has 2 fields but the header has 3", 3, None),
    ("bad_quoting", "d.csv", HEADER + 'a,"b"c,1\n', r"malformed CSV", 2, None),
    ("duplicate_header", "d.csv", "text_a,text_b,text_a,label\na,b,c,1\n", r"the column 'text_a' appears twice", 1,
     None),
    ("invalid_json_line", "d.jsonl", _jsonl(_pair()) + "{not json}\n", r"not valid JSON", 2, None),
    ("json_line_not_object", "d.jsonl", '["a", "b", 1]\n', r"expected one JSON object per line, found an array", 1,
     None),
    ("unknown_extension", "d.txt", HEADER + GOOD_ROWS, r"unknown file format '\.txt'; supported: \.csv, \.tsv", None,
     None),
    ("folder_instead_of_file", "d.csv", "DIR", r"is a folder, expected a file", None, None),
    ("missing_path", "d.csv", None, r"file not found", None, None),
    ("parquet_int_text", "d.parquet", pd.DataFrame({"text_a": [1, 2], "text_b": ["x", "y"], "label": [1.0, 0.0]}),
     r"the text must be a string, found int \(1\)", 1, "text_a"),
    ("parquet_string_labels", "d.parquet", pd.DataFrame({"text_a": ["a", "b"], "text_b": ["x", "y"],
                                                          "label": ["1", "0"]}),
     r"the label must be a number, found str \('1'\)", 1, "label"),
    ("parquet_corrupt", "d.parquet", b"this is not parquet", r"not a readable Parquet file", None, None),
    ("tsv_missing_column", "d.tsv", "text_a\tlabel\na\t1\n", r"column 'text_b' not found", None, "text_b"),
]


def _materialise(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    if isinstance(content, pd.DataFrame):
        content.to_parquet(path, index=False)
    elif content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_bytes(content.encode("utf-8"))
    return path


@pytest.mark.parametrize("case,name,content,pattern,row,field", BAD_INPUT_CASES, ids=[c[0] for c in BAD_INPUT_CASES])
def test_bad_input_raises_one_clear_error(tmp_path, case, name, content, pattern, row, field):
    path = _materialise(tmp_path, name, content)
    with pytest.raises(DataError, match=pattern) as info:
        read_pairs(path)
    err = info.value
    assert err.file == str(path)
    assert err.row == row
    assert err.field == field
    prefix = ", ".join([str(path)] + ([f"row {row}"] if row is not None else []) +
                       ([f"field '{field}'"] if field is not None else []))
    assert str(err).startswith(prefix + ": ")


def test_error_message_format():
    err = DataError("label 7 is outside the declared range [0, 1]", file="data.csv", row=7, field="label")
    assert str(err) == "data.csv, row 7, field 'label': label 7 is outside the declared range [0, 1]"
    assert isinstance(err, ValueError)
    assert str(DataError("plain")) == "plain"


def test_permission_denied(tmp_path, monkeypatch):
    # Tests may run as root, which can read anything; simulate the OS refusing instead of chmod.
    path = _materialise(tmp_path, "d.csv", HEADER + GOOD_ROWS)

    def refuse(_path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(data, "_probe_open", refuse)
    with pytest.raises(DataError, match="permission denied") as info:
        read_pairs(path)
    assert info.value.file == str(path)


@pytest.mark.parametrize("kwargs,pattern", [
    ({"label_range": (1, 1)}, r"lo < hi"),
    ({"label_range": (0, float("nan"))}, r"lo < hi"),
    ({"label_range": (0, 5), "match_threshold": 6}, r"match_threshold 6 is outside the label range \[0, 5\]"),
    ({"max_chars": 0}, r"max_chars must be >= 1"),
])
def test_bad_spec(kwargs, pattern):
    with pytest.raises(DataError, match=pattern):
        DataSpec(**kwargs)


def test_canonical_frame(tmp_path):
    path = _materialise(tmp_path, "d.csv", HEADER + "  How do I cancel?  ,Cancel my order,1\nHi,Bye,0\n")
    df = read_pairs(path)
    assert list(df.columns) == ["text_a", "text_b", "label", "match", "pair_id"]
    assert df["text_a"].tolist() == ["How do I cancel?", "Hi"]  # stripped
    assert df["label"].dtype == np.float64 and df["match"].dtype == np.int64
    assert df["match"].tolist() == [1, 0]
    assert df["pair_id"][0] == data.pair_id("How do I cancel?", "Cancel my order")
    assert re.fullmatch(r"[0-9a-f]{16}", df["pair_id"][0])
    assert df.attrs == {"source": str(path), "graded": False}


def test_bom_accepted(tmp_path):
    path = _materialise(tmp_path, "d.csv", b"\xef\xbb\xbf" + (HEADER + GOOD_ROWS).encode())
    assert read_pairs(path)["text_a"].tolist() == ["How do I cancel my order?"]


def test_crlf_accepted(tmp_path):
    path = _materialise(tmp_path, "d.csv", (HEADER + GOOD_ROWS + "x,y,0\n").replace("\n", "\r\n"))
    df = read_pairs(path)
    assert df["text_b"].tolist() == ["How can I cancel an order?", "y"]
    assert df["label"].tolist() == [1.0, 0.0]


def test_csv_rows_count_lines_of_quoted_multiline_fields(tmp_path):
    content = HEADER + '"first line\nsecond line",b,1\n\na,b,9\n'  # a 2-line record, a blank line, then line 5
    path = _materialise(tmp_path, "d.csv", content)
    with pytest.raises(DataError) as info:
        read_pairs(path)
    assert info.value.row == 5


def test_tsv_reading(tmp_path):
    path = _materialise(tmp_path, "d.tsv", 'q\tp\tscore\nSay "hi", please\tHello, there\t1\nOne\tTwo\t0\n')
    df = read_pairs(path, DataSpec(text_a="q", text_b="p", label="score"))
    assert df["text_a"].tolist() == ['Say "hi", please', "One"]  # quotes and commas are plain text in TSV
    assert df["text_b"].tolist() == ["Hello, there", "Two"]
    assert df["match"].tolist() == [1, 0]


def test_jsonl_blank_lines_and_json_array(tmp_path):
    jsonl = _materialise(tmp_path, "d.jsonl", "\n" + _jsonl(_pair()) + "\n" + _jsonl(_pair(text_a="x", label=True)))
    assert read_pairs(jsonl)["label"].tolist() == [1.0, 1.0]
    array = _materialise(tmp_path, "a.json", json.dumps([_pair(), _pair(text_b=None)]))
    with pytest.raises(DataError, match="missing") as info:
        read_pairs(array)
    assert info.value.row == 2


def test_graded_range_scaling_and_threshold(tmp_path):
    path = _materialise(tmp_path, "d.csv", HEADER + "a,b,0\nc,d,2.5\ne,f,4\ng,h,5\n")
    df = read_pairs(path, DataSpec(label_range=(0, 5)))
    assert df["label"].tolist() == [0.0, 0.5, 0.8, 1.0]
    assert df["match"].tolist() == [0, 1, 1, 1]  # default threshold: midpoint 2.5, inclusive
    assert df.attrs["graded"] is True
    strict = read_pairs(path, DataSpec(label_range=(0, 5), match_threshold=4))
    assert strict["match"].tolist() == [0, 0, 1, 1]
    with pytest.raises(DataError, match=r"label 5 is outside the declared range \[0, 4\]"):
        read_pairs(path, DataSpec(label_range=(0, 4)))


def test_soft_labels_in_unit_range_mark_data_graded(tmp_path):
    path = _materialise(tmp_path, "d.jsonl", _jsonl(_pair(label=1), _pair(text_a="x", label=0.3)))
    df = read_pairs(path)
    assert df.attrs["graded"] is True
    assert df["match"].tolist() == [1, 0]


def test_long_text_truncated_with_warning(tmp_path, caplog):
    long_text = "x" * 1_000_000
    path = _materialise(tmp_path, "d.csv", HEADER + f"short,{long_text},1\n")
    with caplog.at_level(logging.WARNING, logger="components.data.contract"):
        df = read_pairs(path, DataSpec(max_chars=1000))
    assert len(df["text_b"][0]) == 1000
    assert f"{path}, row 2, field 'text_b': text of 1000000 characters truncated to max_chars=1000" in caplog.text


def test_many_truncations_summarised(tmp_path, caplog):
    rows = "".join(f"{i}{'y' * 50},b,1\n" for i in range(8))
    path = _materialise(tmp_path, "d.csv", HEADER + rows)
    with caplog.at_level(logging.WARNING, logger="components.data.contract"):
        read_pairs(path, DataSpec(max_chars=10))
    assert len(caplog.records) == data.MAX_TRUNCATION_WARNINGS + 1
    assert "3 more texts truncated" in caplog.text


def test_duplicates_dropped_with_count(tmp_path, caplog):
    rows = "a,b,1\nc,d,0\na,b,1\n  a ,b,0\nb,a,1\n"  # the 4th is a duplicate after stripping; b,a is another pair
    path = _materialise(tmp_path, "d.csv", HEADER + rows)
    with caplog.at_level(logging.WARNING, logger="components.data.contract"):
        df = read_pairs(path)
    assert df[["text_a", "text_b"]].values.tolist() == [["a", "b"], ["c", "d"], ["b", "a"]]
    assert df["label"].tolist() == [1.0, 0.0, 1.0]  # the first of each kept
    assert "dropped 2 duplicate pairs" in caplog.text
    assert "1 of them had a different label" in caplog.text


def test_extra_columns_pass_through_and_renamed_columns(tmp_path):
    path = _materialise(tmp_path, "d.jsonl", _jsonl({"q": "a", "p": "b", "y": 1, "group": 3, "pair_id": "stale"}))
    df = read_pairs(path, DataSpec(text_a="q", text_b="p", label="y"))
    assert list(df.columns) == ["text_a", "text_b", "label", "match", "pair_id", "group"]
    assert df["group"].tolist() == [3]
    assert df["pair_id"][0] == data.pair_id("a", "b")


def test_existing_match_column_kept_unless_threshold_given(tmp_path):
    path = _materialise(tmp_path, "d.jsonl", _jsonl(_pair(label=0.6, match=0), _pair(text_a="x", label=0.3, match=1)))
    assert read_pairs(path)["match"].tolist() == [0, 1]
    assert read_pairs(path, DataSpec(match_threshold=0.5))["match"].tolist() == [1, 0]
    bad = _materialise(tmp_path, "bad.jsonl", _jsonl(_pair(match=2)))
    with pytest.raises(DataError, match="match must be 0 or 1") as info:
        read_pairs(bad)
    assert (info.value.row, info.value.field) == (1, "match")
