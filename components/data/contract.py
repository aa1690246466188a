"""The data contract: reading and checking labelled text pairs (writing them: :mod:`components.data.writing`;
splitting them: :mod:`components.data.splitting`).

Every step of flipkd consumes one canonical table, a pandas DataFrame with the columns

    text_a   str    first text, stripped of surrounding whitespace, at most ``max_chars`` characters
    text_b   str    second text, same rules
    label    float  the gold label scaled to [0, 1]: (label - lo) / (hi - lo) for the declared range [lo, hi]
    match    int    1 if the ORIGINAL label >= match_threshold, else 0
    pair_id  str    first 16 hex characters of sha256(text_a + "\\x1f" + text_b): stable across runs

plus any other column of the user's file, passed through unchanged (e.g. ``group``). ``df.attrs`` holds
``source`` (the path read) and ``graded`` (True when labels are not plain 0/1).

User files are the main source of confusing failures deep inside training, so :func:`read_pairs` checks
everything up front and raises one :class:`DataError` naming the file, the row (as the user sees it: the
line number for CSV/TSV/JSONL, header = line 1; the 1-based row for Parquet and JSON arrays) and the field.

Formats, chosen by extension:

- ``.csv``: RFC 4180 (quoted fields may hold commas and newlines); UTF-8, a BOM and CRLF line ends are fine.
- ``.tsv``: plain tab-separated values without quoting (the IANA definition): a field cannot hold a tab or
  a newline, and quote characters are ordinary text.
- ``.jsonl`` / ``.json``: one JSON object per line; a ``.json`` file holding one JSON array of objects is
  read too (its rows are the 1-based array positions).
- ``.parquet``: texts must be string columns and labels numeric columns.

Labels are numbers within the declared range ``label_range`` (default [0, 1]). With the default range, any
value in [0, 1] is accepted: 0/1 are hard labels and anything in between is a graded (soft) label, so a mix
is allowed and marks the data as graded. Words such as "yes"/"no" are not labels: they are reported as
non-numeric (map them to 1/0 first). In CSV/TSV the label is parsed from its text; in JSON and Parquet it
must already be a number (or a boolean), a string label there is a type error.

If the file already has a ``match`` column (a file written by :func:`~components.data.writing.write_pairs`) and no
``match_threshold`` is given, that column is kept (after checking it holds 0/1) instead of recomputed, so a graded
data set with a custom threshold survives a write/read round trip.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import logging
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.data.visible_text import BLANK_MESSAGE, is_blank

logger = logging.getLogger(__name__)

CANONICAL_COLUMNS = ("text_a", "text_b", "label", "match", "pair_id")
SPLITS = ("train", "dev", "test")
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
# Options of the pipelines that rename a column or declare the range; named in error messages.
OPTION_NAMES = {"text_a": "--text-a-col", "text_b": "--text-b-col", "label": "--label-col"}
RANGE_OPTION = "--label-range"
THRESHOLD_OPTION = "--match-threshold"
MISSING_LABEL_WORDS = {"", "nan", "na", "n/a", "null", "none"}
MAX_TRUNCATION_WARNINGS = 5
_ABSENT = object()  # a JSON line without the key, as opposed to an explicit null


class DataError(ValueError):
    """One clear message naming file, row and field where there is one.

    ``str(err)`` reads ``"data.csv, row 7, field 'label': label 7 is outside the declared range [0, 1]"``;
    the parts are also kept as attributes so pipelines can log them separately.
    """

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None, field: str | None = None):
        self.message = message
        self.file = file
        self.row = row
        self.field = field
        where = []
        if file is not None:
            where.append(file)
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


@dataclass
class DataSpec:
    """How to read a user's pair file: column names, label range and limits."""

    text_a: str = field(default="text_a", metadata={"help": "column of the first text in the user's file"})
    text_b: str = field(default="text_b", metadata={"help": "column of the second text in the user's file"})
    label: str = field(default="label", metadata={"help": "column of the gold label in the user's file"})
    label_range: tuple[float, float] = field(
        default=(0.0, 1.0), metadata={"help": "declared label range [lo, hi]; graded data e.g. (0, 5)"}
    )
    match_threshold: float | None = field(
        default=None,
        metadata={"help": "original-scale label at or above which a pair matches; None: midpoint of the range"},
    )
    max_chars: int = field(default=20000, metadata={"help": "longer texts are truncated, with a warning"})

    def __post_init__(self) -> None:
        lo, hi = (float(v) for v in self.label_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise DataError(f"the label range must be two finite numbers lo < hi, got {list(self.label_range)}",
                            field="label_range")
        self.label_range = (lo, hi)
        if self.match_threshold is not None and not lo <= float(self.match_threshold) <= hi:
            raise DataError(f"match_threshold {_num(self.match_threshold)} is outside the label range "
                            f"[{_num(lo)}, {_num(hi)}]", field="match_threshold")
        if self.max_chars < 1:
            raise DataError(f"max_chars must be >= 1, got {self.max_chars}", field="max_chars")

    @property
    def threshold(self) -> float:
        """The match threshold on the original scale (the midpoint of the range unless declared)."""
        lo, hi = self.label_range
        return float(self.match_threshold) if self.match_threshold is not None else (lo + hi) / 2


@dataclass
class _RawTable:
    """A file as read, before checking: column names, one list of values per column, user-facing row numbers.

    ``typed`` is False for CSV/TSV (every value is the text of a cell) and True for JSON/Parquet.
    """

    columns: list[str]
    values: dict[str, list[Any]]
    rows: list[int]
    typed: bool


# ----------------------------------------------------------------------------------------------- reading


def read_pairs(path: str | Path, spec: DataSpec = DataSpec()) -> pd.DataFrame:
    """Read a labelled pair file into the canonical frame, or raise one :class:`DataError` saying what is wrong."""
    path = Path(path)
    name = str(path)
    _check_file(path)
    fmt = _format_of(path)
    raw = _READERS[fmt](path, name)
    if not raw.rows:
        raise DataError("the file has a header but no data rows" if fmt in ("csv", "tsv") else
                        "the file holds no data rows", file=name)
    columns = _resolve_columns(raw.columns, spec, name)
    frame = _canonical_frame(raw, columns, spec, name)
    frame = _drop_duplicates(frame, name)
    frame.attrs["source"] = name
    frame.attrs["graded"] = spec.label_range != (0.0, 1.0) or bool((~frame["label"].isin([0.0, 1.0])).any())
    return frame


def _format_of(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"unknown file format '{path.suffix or '(no extension)'}'; supported: "
                        f"{', '.join(FORMATS)}", file=str(path))
    return fmt


def _check_file(path: Path) -> None:
    """Fail early, with the reason, on the path problems that would otherwise surface as a pandas traceback."""
    name = str(path)
    if not path.exists():
        raise DataError("file not found", file=name)
    if path.is_dir():
        raise DataError("is a folder, expected a file", file=name)
    try:
        _probe_open(path)
    except PermissionError:
        raise DataError("permission denied: the file cannot be read", file=name) from None
    except OSError as err:
        raise DataError(f"cannot be read: {err.strerror or err}", file=name) from None
    if path.stat().st_size == 0:
        raise DataError("the file is empty (0 bytes)", file=name)


def _probe_open(path: Path) -> None:
    with open(path, "rb"):
        pass


def _decode_utf8(data: bytes, name: str) -> str:
    """Decode strictly, so a Latin-1 file fails here with the byte offset instead of as mojibake in training."""
    bom = data.startswith(b"\xef\xbb\xbf")
    try:
        return data[3:].decode("utf-8") if bom else data.decode("utf-8")
    except UnicodeDecodeError as err:
        offset = err.start + (3 if bom else 0)
        line = data.count(b"\n", 0, offset) + 1
        raise DataError(f"is not valid UTF-8: byte 0x{data[offset]:02x} at byte offset {offset} (line {line}); "
                        "save the file as UTF-8", file=name, row=line) from None


def _read_bytes(path: Path) -> bytes:
    return path.read_bytes()


def _read_delimited(path: Path, name: str, delimiter: str) -> _RawTable:
    text = _decode_utf8(_read_bytes(path), name)
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    with _large_csv_fields():
        try:
            header = next(reader, None)
            while header is not None and not any(cell.strip() for cell in header):
                header = next(reader, None)  # leading blank lines
            if header is None:
                raise DataError("the file is empty (no header line)", file=name)
            columns = [cell.strip() for cell in header]
            _check_header(columns, name)
            values: dict[str, list[Any]] = {col: [] for col in columns}
            rows: list[int] = []
            first_line = reader.line_num + 1
            for record in reader:
                row, first_line = first_line, reader.line_num + 1
                if not record or (len(record) == 1 and not record[0].strip() and len(columns) > 1):
                    continue  # blank line
                if len(record) != len(columns):
                    raise DataError(f"the row has {len(record)} fields but the header has {len(columns)}",
                                    file=name, row=row)
                for col, cell in zip(columns, record, strict=True):
                    values[col].append(cell)
                rows.append(row)
        except csv.Error as err:
            raise DataError(f"malformed {'CSV' if delimiter == ',' else 'TSV'}: {err}", file=name,
                            row=reader.line_num) from None
    return _RawTable(columns, values, rows, typed=False)


@contextmanager
def _large_csv_fields() -> Iterator[None]:
    """The csv module refuses fields over 128 KiB; long texts are legal here (truncated later), so lift it."""
    old = csv.field_size_limit()
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            break
        except OverflowError:  # platforms whose C long is 32 bits
            limit //= 2
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _check_header(columns: list[str], name: str) -> None:
    seen: set[str] = set()
    for col in columns:
        if col in seen:
            raise DataError(f"the column '{col}' appears twice in the header", file=name, row=1)
        seen.add(col)


def _read_csv(path: Path, name: str) -> _RawTable:
    return _read_delimited(path, name, ",")


def _read_tsv(path: Path, name: str) -> _RawTable:
    return _read_delimited(path, name, "\t")


def _read_jsonl(path: Path, name: str) -> _RawTable:
    text = _decode_utf8(_read_bytes(path), name)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        return _read_json_array(text, name)
    records: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"not valid JSON: {err.msg} at column {err.colno}", file=name, row=number) from None
        if not isinstance(obj, dict):
            raise DataError(f"expected one JSON object per line, found {_json_kind(obj)}", file=name, row=number)
        records.append((number, obj))
    return _records_table(records)


def _read_json_array(text: str, name: str) -> _RawTable:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"not valid JSON: {err.msg} at column {err.colno}", file=name, row=err.lineno) from None
    if not isinstance(items, list):
        raise DataError(f"expected JSON lines or one array of objects, found {_json_kind(items)}", file=name)
    for number, obj in enumerate(items, start=1):
        if not isinstance(obj, dict):
            raise DataError(f"expected an array of JSON objects, found {_json_kind(obj)}", file=name, row=number)
    return _records_table(list(enumerate(items, start=1)))


def _json_kind(obj: Any) -> str:
    return {list: "an array", str: "a string", type(None): "null", bool: "a boolean"}.get(type(obj), "a number")


def _records_table(records: list[tuple[int, dict[str, Any]]]) -> _RawTable:
    columns: dict[str, None] = {}
    for _, obj in records:
        columns.update(dict.fromkeys(obj))
    values = {col: [obj.get(col, _ABSENT) for _, obj in records] for col in columns}
    return _RawTable(list(columns), values, [number for number, _ in records], typed=True)


def _read_parquet(path: Path, name: str) -> _RawTable:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        values = {col: table.column(col).to_pylist() for col in table.column_names}
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"not a readable Parquet file: {err}", file=name) from None
    return _RawTable(list(table.column_names), values, list(range(1, table.num_rows + 1)), typed=True)


_READERS = {"csv": _read_csv, "tsv": _read_tsv, "jsonl": _read_jsonl, "parquet": _read_parquet}


def _resolve_columns(found: list[str], spec: DataSpec, name: str) -> dict[str, str]:
    """Map canonical names to the user's columns, or explain which column is missing and how to rename it."""
    wanted = {"text_a": spec.text_a, "text_b": spec.text_b, "label": spec.label}
    for canonical, column in wanted.items():
        if column in found:
            continue
        listing = ", ".join(f"'{c}'" for c in found) or "none"
        hint = _close_match(column, [c for c in found if c not in wanted.values()])
        raise DataError(
            f"column '{column}' not found{hint}; columns found: {listing}. Rename the column in the file or pass "
            f"{OPTION_NAMES[canonical]} NAME",
            file=name, field=column,
        )
    return wanted


def _close_match(column: str, found: list[str]) -> str:
    lowered = {c.lower(): c for c in found}
    if column.lower() in lowered:
        return f" (did you mean '{lowered[column.lower()]}'?)"
    close = difflib.get_close_matches(column, found, n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _canonical_frame(raw: _RawTable, columns: dict[str, str], spec: DataSpec, name: str) -> pd.DataFrame:
    truncated: list[tuple[int, str, int]] = []
    texts = {}
    for canonical in ("text_a", "text_b"):
        column = columns[canonical]
        texts[canonical] = [
            _clean_text(value, spec.max_chars, name, row, column, truncated)
            for value, row in zip(raw.values[column], raw.rows, strict=True)
        ]
    _warn_truncated(truncated, spec.max_chars, name)
    labels = np.array([_parse_label(value, raw.typed, name, row, columns["label"])
                       for value, row in zip(raw.values[columns["label"]], raw.rows, strict=True)], dtype=np.float64)
    _check_range(labels, raw.rows, spec, name, columns["label"])
    lo, hi = spec.label_range
    frame = pd.DataFrame({"text_a": texts["text_a"], "text_b": texts["text_b"], "label": (labels - lo) / (hi - lo)})
    if "match" in raw.values and spec.match_threshold is None and "match" not in columns.values():
        frame["match"] = [_parse_match(v, name, row) for v, row in zip(raw.values["match"], raw.rows, strict=True)]
    else:
        frame["match"] = (labels >= spec.threshold).astype(np.int64)
    frame["pair_id"] = [pair_id(a, b) for a, b in zip(frame["text_a"], frame["text_b"], strict=True)]
    for column in raw.columns:  # pass through the user's other columns (e.g. "group")
        if column not in columns.values() and column not in frame.columns:
            frame[column] = [None if v is _ABSENT else v for v in raw.values[column]]
    return frame


def _clean_text(value: Any, max_chars: int, name: str, row: int, column: str,
                truncated: list[tuple[int, str, int]]) -> str:
    """Return the stripped, length-capped text or raise naming the row; long texts are noted for one warning."""
    if value is _ABSENT:
        raise DataError("the field is absent from this row", file=name, row=row, field=column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise DataError("the text is missing (null)", file=name, row=row, field=column)
    if not isinstance(value, str):
        raise DataError(f"the text must be a string, found {type(value).__name__} ({value!r})",
                        file=name, row=row, field=column)
    text = value.strip()
    if is_blank(text):
        raise DataError("the text is empty" if not value else BLANK_MESSAGE, file=name, row=row, field=column)
    if len(text) > max_chars:
        truncated.append((row, column, len(text)))
        text = text[:max_chars]
    return text


def _warn_truncated(truncated: list[tuple[int, str, int]], max_chars: int, name: str) -> None:
    for row, column, length in truncated[:MAX_TRUNCATION_WARNINGS]:
        logger.warning("%s, row %d, field '%s': text of %d characters truncated to max_chars=%d",
                       name, row, column, length, max_chars)
    if len(truncated) > MAX_TRUNCATION_WARNINGS:
        logger.warning("%s: %d more texts truncated to max_chars=%d", name,
                       len(truncated) - MAX_TRUNCATION_WARNINGS, max_chars)


def _parse_label(value: Any, typed: bool, name: str, row: int, column: str) -> float:
    """A label is a number: parsed from text in CSV/TSV, already numeric (or boolean) in JSON and Parquet."""
    if value is _ABSENT or value is None:
        raise DataError("the label is missing (null)", file=name, row=row, field=column)
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (int, float, np.number)):
        number = float(value)
    elif isinstance(value, str) and not typed:
        if value.strip().lower() in MISSING_LABEL_WORDS:
            raise DataError(f"the label is missing ({value.strip() or 'empty cell'!r})", file=name, row=row,
                            field=column)
        try:
            number = float(value)
        except ValueError:
            raise DataError(f"label {value.strip()!r} is not a number; labels must be numbers in the declared range "
                            "(map words such as yes/no to 1/0)", file=name, row=row, field=column) from None
    else:
        raise DataError(f"the label must be a number, found {type(value).__name__} ({value!r})",
                        file=name, row=row, field=column)
    if math.isnan(number):
        raise DataError("the label is missing (NaN)", file=name, row=row, field=column)
    return number


def _check_range(labels: np.ndarray, rows: list[int], spec: DataSpec, name: str, column: str) -> None:
    lo, hi = spec.label_range
    outside = np.flatnonzero((labels < lo) | (labels > hi))
    if outside.size:
        k = int(outside[0])
        raise DataError(f"label {_num(labels[k])} is outside the declared range [{_num(lo)}, {_num(hi)}] "
                        f"(declare the range with {RANGE_OPTION} LO,HI, e.g. {RANGE_OPTION} 0,5)",
                        file=name, row=rows[k], field=column)


def _parse_match(value: Any, name: str, row: int) -> int:
    if value is _ABSENT or value is None:
        raise DataError("match is missing (null)", file=name, row=row, field="match")
    text = str(value).strip().lower()
    if isinstance(value, (bool, np.bool_, int, float, np.number)) and value in (0, 1):
        return int(value)
    if text in ("0", "1", "0.0", "1.0", "true", "false"):
        return int(text in ("1", "1.0", "true"))
    raise DataError(f"match must be 0 or 1, found {value!r} (or drop the column and pass {THRESHOLD_OPTION})",
                    file=name, row=row, field="match")


def _drop_duplicates(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Repeated pairs would be counted twice in training and could sit on both sides of a split: keep the first."""
    duplicated = frame.duplicated(subset=["text_a", "text_b"], keep="first")
    count = int(duplicated.sum())
    if not count:
        return frame
    first_label = frame.groupby(["text_a", "text_b"], sort=False)["label"].transform("first")
    conflicting = int((duplicated & (frame["label"] != first_label)).sum())
    logger.warning("%s: dropped %d duplicate pairs (same text_a and text_b, kept the first of each)%s", name, count,
                   f"; {conflicting} of them had a different label than the kept one" if conflicting else "")
    return frame.loc[~duplicated].reset_index(drop=True)


def _num(value: float) -> str:
    return f"{float(value):g}"


def pair_id(text_a: str, text_b: str) -> str:
    """Stable id of an ordered pair: the first 16 hex characters of sha256(text_a + "\\x1f" + text_b)."""
    return hashlib.sha256(f"{text_a}\x1f{text_b}".encode()).hexdigest()[:16]
