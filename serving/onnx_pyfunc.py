"""The deployed flipkd model: an MLflow pyfunc over the exported ONNX encoder.

At serving time it needs only onnxruntime, tokenizers, numpy and pandas (plus MLflow itself): this module
imports neither torch nor transformers, and the tests check that in a fresh interpreter.

The model folder (one artifact, ``bundle``) holds:

- ``model.onnx`` (the served file: int8, or fp32 when exported with ``--serve fp32``) mapping
  ``input_ids``, ``attention_mask`` -> ``pooled`` (L2-normalised z);
- ``tokenizer.json`` (the student's tokenizer, read with ``tokenizers.Tokenizer.from_file``);
- ``flipkd_serving.json`` (:data:`CONFIG_FILE`): max length, EOS/pad ids, padding side, instruction prefix, suffix,
  decision threshold, limits, top-k;
- with an FAQ: ``faq.json`` (ids and texts) and ``faq_embeddings.npy`` (float32 [M, r], read with
  ``allow_pickle=False``), embedded once at export time by the served ONNX file;
- ``flipkd_checksums.json`` (:data:`CHECKSUM_FILE`): sha256 of every other file, written last by ``export``.
  ``load_context`` refuses, naming the file, a bundle whose files do not match it (a bundle without the
  listing, exported before it existed, is loaded unchecked).

Text is tokenized exactly as ``LoraEncoder.tokenize`` does: instruction prefix, the tokenizer's own special
tokens, truncation so that the suffix's tokens and EOS still fit in ``max_length``, then the suffix and EOS
appended, padding on the tokenizer's side. So the served vectors equal the torch ``encode`` vectors (fp32
within 1e-4).

Input forms (a pandas DataFrame; JSON ``dataframe_split``, ``dataframe_records`` and ``inputs`` all arrive
as one), one per request:

========================  =============================================================================
columns                   output columns (one row per input row)
========================  =============================================================================
``text_a``, ``text_b``    ``score`` (cosine of the two z), ``match`` (``score >= threshold``)
``text``                  ``embedding`` (list of floats, length r)
``query``                 ``faq_id``, ``faq_text``, ``score`` of the best FAQ entry, and ``answers``: the
                          top-k entries as a list of ``{faq_id, faq_text, score}`` (no ``match``: no FAQ
                          threshold is calibrated; the client decides from the score)
========================  =============================================================================

``params={"top_k": k}`` overrides the exported top-k for a query request. Bad input raises
:class:`InputError` (an ``MlflowException`` with ``INVALID_PARAMETER_VALUE``), which the scoring server returns as
HTTP 400 with the message alone: no recognised column set, a missing partner column, a value that is not a string,
an empty text or one of only whitespace and invisible characters (``components/data/visible_text.py``), more rows
than ``max_rows``, and a text longer than ``max_chars`` characters. Long texts are rejected by default
(``on_long_text="reject"``): the model reads only the first ``max_length - 1`` tokens, so a huge text is almost
certainly a client mistake. With ``on_long_text="truncate"`` (an export option) they are
cut to ``max_chars`` characters instead and the output gets a boolean ``truncated`` column.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from tokenizers import Tokenizer

from components.checksums import CHECKSUM_FILE, write_checksums  # noqa: F401  (export calls it from here)
from components.checksums import verify_checksums as _verify_listing
from components.data.visible_text import is_blank
from components.export.onnx_session import make_session
from serving.request_batcher import RequestBatcher

# the torch-free component modules this package imports (dotted below components): the exported model ships these,
# their packages' __init__ and serving/, nothing else
COMPONENT_MODULES = ("checksums", "data.visible_text", "export.onnx_session")
CONFIG_FILE = "flipkd_serving.json"
FORMAT = "flipkd-serving/1"
BUNDLE = "bundle"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
FAQ_FILE = "faq.json"
FAQ_EMBEDDINGS_FILE = "faq_embeddings.npy"
THREADS_ENV = "FLIPKD_ONNX_THREADS"
BATCHING_ENV = "FLIPKD_BATCH_REQUESTS"
FORMS = {"pairs": ("text_a", "text_b"), "texts": ("text",), "faq": ("query",)}
TOP_K_MAX = 100

DEFAULTS: dict[str, Any] = {
    "format": FORMAT, "model_file": MODEL_FILE, "tokenizer_file": TOKENIZER_FILE, "engine": "int8",
    "max_length": 64, "append_eos": True, "eos_token_id": None, "pad_token_id": None, "padding_side": "right",
    "truncation_side": "right", "instruction": "", "suffix": "", "threshold": 0.5, "dimension": None, "max_rows": 256,
    "max_chars": 4000, "on_long_text": "reject", "encode_batch_size": 32, "threads": None, "top_k": 5,
    "faq_file": None, "faq_embeddings_file": None,
}


class InputError(MlflowException):
    """A bad request (HTTP 400) whose message stands alone in the error body.

    MLflow's scoring server rewrites the ``message`` of an MlflowException raised by ``predict`` into
    ``"Failed to predict data '<the whole input DataFrame>'. Error: <message>"``, so the one line that says what
    is wrong came after a dump of the request (up to a megabyte of text). The rewrite is an assignment to
    ``message``; here the first assignment (the constructor's) is kept and later ones are ignored.
    """

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):
            self._message = value


def bad_input(message: str) -> InputError:
    """An input error the scoring server answers with HTTP 400 and this message alone."""
    return InputError(message, error_code=INVALID_PARAMETER_VALUE)


def verify_checksums(folder: str | Path) -> None:
    """Refuse (ValueError naming the file) a bundle whose files do not match :data:`CHECKSUM_FILE`, or whose
    listing leaves out a file the model reads. Without the listing (an older export) nothing is checked."""
    folder = Path(folder)
    if not (folder / CHECKSUM_FILE).is_file():
        return
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    needed = [CONFIG_FILE, *(config.get(key) or DEFAULTS[key] for key in ("model_file", "tokenizer_file")),
              *(config[key] for key in ("faq_file", "faq_embeddings_file") if config.get(key))]
    _verify_listing(folder, "export the model again", required=needed)


class OnnxTextEncoder:
    """Texts -> L2-normalised z with ONNX Runtime and the tokenizers library (no torch)."""

    def __init__(self, folder: str | Path, config: dict | None = None, threads: int | None = None) -> None:
        folder = Path(folder)
        if config is None:
            config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        self.config = {**DEFAULTS, **config}
        if self.config.get("format") != FORMAT:
            raise ValueError(f"{folder / CONFIG_FILE}: format {self.config.get('format')!r}, expected {FORMAT!r}")
        cfg = self.config
        self.tokenizer = Tokenizer.from_file(str(folder / cfg["tokenizer_file"]))
        self.tokenizer.no_padding()
        if cfg["append_eos"] and cfg["eos_token_id"] is None:
            raise ValueError(f"{CONFIG_FILE}: append_eos needs eos_token_id")
        self.tail = list(self.tokenizer.encode(cfg["suffix"], add_special_tokens=False).ids) if cfg["suffix"] else []
        if cfg["append_eos"]:
            self.tail.append(int(cfg["eos_token_id"]))
        self.room = int(cfg["max_length"]) - len(self.tail)
        if self.room < 1:
            raise ValueError(f"{CONFIG_FILE}: max_length {cfg['max_length']} leaves no room for text")
        self.tokenizer.enable_truncation(max_length=self.room, direction=cfg["truncation_side"])
        self.pad_id = int(cfg["pad_token_id"] if cfg["pad_token_id"] is not None else cfg["eos_token_id"] or 0)
        env_threads = os.environ.get(THREADS_ENV)
        threads = threads or (int(env_threads) if env_threads else None) or cfg["threads"]
        self.session = make_session(folder / cfg["model_file"], threads)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, as ``LoraEncoder.tokenize`` makes them (before padding)."""
        cfg = self.config
        encodings = self.tokenizer.encode_batch([cfg["instruction"] + t for t in texts], add_special_tokens=True)
        return [list(e.ids) + self.tail for e in encodings]

    def batch(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Padded int64 ``input_ids`` and ``attention_mask`` [N, longest]."""
        ids = self.token_ids(texts)
        width = max(len(row) for row in ids)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        left = self.config["padding_side"] == "left"
        for i, row in enumerate(ids):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            input_ids[i, span] = row
            mask[i, span] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def token_batches(self, texts: Sequence[str], batch_size: int | None = None) -> list[dict[str, np.ndarray]]:
        """The model inputs of ``texts`` as :meth:`encode` runs them (by length, ``encode_batch_size`` rows)."""
        batch_size = int(batch_size or self.config["encode_batch_size"])
        ordered = sorted(texts, key=len)
        return [self.batch(ordered[start:start + batch_size]) for start in range(0, len(ordered), batch_size)]

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Float32 [N, r] in input order; batches are formed by length so little padding is run."""
        batch_size = int(batch_size or self.config["encode_batch_size"])
        texts = list(texts)
        if not texts:
            return np.zeros((0, int(self.config["dimension"] or 0)), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: np.ndarray | None = None
        for start in range(0, len(texts), batch_size):
            index = order[start:start + batch_size]
            z = self.session.run(["pooled"], self.batch([texts[i] for i in index]))[0]
            if out is None:
                out = np.empty((len(texts), z.shape[1]), dtype=np.float32)
            out[index] = z
        return out


def _as_frame(model_input: Any) -> pd.DataFrame:
    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, dict):
        values = list(model_input.values())
        if values and all(isinstance(v, list | tuple | np.ndarray | pd.Series) for v in values):
            return pd.DataFrame({k: list(v) for k, v in model_input.items()})
        return pd.DataFrame([model_input])
    if isinstance(model_input, list) and model_input and all(isinstance(r, dict) for r in model_input):
        return pd.DataFrame(model_input)
    raise bad_input(f"expected a table with columns text_a+text_b, text, or query; got {type(model_input).__name__}")


def _describe(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "null"
    return f"{type(value).__name__} {str(value)[:40]!r}"


class FlipKDOnnxModel(mlflow.pyfunc.PythonModel):
    """Pairs -> score and match; texts -> embeddings; FAQ queries -> top-k entries (see the module docstring)."""

    def load_context(self, context) -> None:
        folder = Path(context.artifacts[BUNDLE])
        verify_checksums(folder)
        self.encoder = OnnxTextEncoder(folder)
        self.config = self.encoder.config
        # $FLIPKD_BATCH_REQUESTS=1: concurrent requests share ONNX Runtime runs (serving/request_batcher.py). Off by
        # default: MLflow's server runs each request in a thread and ONNX Runtime releases the GIL, so one worker with
        # one thread per run already keeps 2 cores busy, and sharing runs serialised them (README, Serve settings)
        batching = os.environ.get(BATCHING_ENV, "0").strip().lower() in ("1", "true", "yes", "on")
        self.encode = RequestBatcher(self.encoder.encode).encode if batching else self.encoder.encode
        self.faq_ids: list[str] = []
        self.faq_texts: list[str] = []
        self.faq_embeddings = np.zeros((0, 0), dtype=np.float32)
        if self.config.get("faq_file"):
            faq = json.loads((folder / self.config["faq_file"]).read_text(encoding="utf-8"))
            self.faq_ids, self.faq_texts = [str(i) for i in faq["faq_id"]], list(faq["text"])
            self.faq_embeddings = np.load(folder / self.config["faq_embeddings_file"], allow_pickle=False)
            if self.faq_embeddings.shape[0] != len(self.faq_ids):
                raise ValueError(f"{FAQ_EMBEDDINGS_FILE} has {self.faq_embeddings.shape[0]} rows for "
                                 f"{len(self.faq_ids)} FAQ entries")

    # -------------------------------------------------------------------------------- validation
    def _form(self, frame: pd.DataFrame) -> str:
        columns = set(map(str, frame.columns))
        found = [name for name, cols in FORMS.items() if set(cols) & columns]
        if len(found) != 1:
            given = ", ".join(sorted(columns)) or "none"
            what = "more than one input form" if found else "no recognised column"
            raise bad_input(f"{what} (columns: {given}); send exactly one of: text_a and text_b (pair scores), "
                            f"text (embeddings), query (FAQ top-k)")
        form = found[0]
        missing = [c for c in FORMS[form] if c not in columns]
        if missing:
            raise bad_input(f"missing column {missing[0]!r}: pairs need both text_a and text_b")
        return form

    def _texts(self, frame: pd.DataFrame, column: str) -> tuple[list[str], np.ndarray]:
        cap, mode = int(self.config["max_chars"]), self.config["on_long_text"]
        out, cut = [], np.zeros(len(frame), dtype=bool)
        for row, value in enumerate(frame[column].tolist()):
            if not isinstance(value, str):
                raise bad_input(f"{column} row {row}: expected a string, got {_describe(value)}")
            if is_blank(value):
                raise bad_input(f"{column} row {row}: empty text (nothing but whitespace or invisible characters)"
                                if value else f"{column} row {row}: empty text")
            if len(value) > cap:
                if mode != "truncate":
                    raise bad_input(f"{column} row {row}: {len(value)} characters, the limit is {cap} (the model "
                                    f"reads only its first {self.config['max_length'] - 1} tokens)")
                value, cut[row] = value[:cap], True
            out.append(value)
        return out, cut

    def _top_k(self, params: dict | None) -> int:
        value = (params or {}).get("top_k", self.config["top_k"])
        try:
            top_k = int(value)
        except (TypeError, ValueError):
            raise bad_input(f"top_k must be an integer, got {value!r}") from None
        if not 1 <= top_k <= TOP_K_MAX:
            raise bad_input(f"top_k must be in 1..{TOP_K_MAX}, got {top_k}")
        return top_k

    # -------------------------------------------------------------------------------- prediction
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        frame = _as_frame(model_input)
        if len(frame.columns) == 0:  # an empty request, or only columns MLflow's schema check dropped
            raise bad_input("no rows and no recognised column: send at least one row with exactly one of: text_a "
                            "and text_b (pair scores), text (embeddings), query (FAQ top-k); other columns are "
                            "ignored")
        if len(frame) > int(self.config["max_rows"]):
            raise bad_input(f"{len(frame)} rows; the limit is {self.config['max_rows']} per request")
        if len(frame) == 0:
            raise bad_input("no rows")
        form = self._form(frame)
        if form == "pairs":
            (text_a, cut_a), (text_b, cut_b) = self._texts(frame, "text_a"), self._texts(frame, "text_b")
            out, cut = self.score_pairs(text_a, text_b), cut_a | cut_b
        elif form == "texts":
            texts, cut = self._texts(frame, "text")
            out = pd.DataFrame({"embedding": [row.tolist() for row in self.encode(texts)]})
        else:
            top_k = self._top_k(params)
            queries, cut = self._texts(frame, "query")
            out = self.search_faq(queries, top_k)
        if self.config["on_long_text"] == "truncate":
            out["truncated"] = cut.tolist()
        return out

    def score_pairs(self, text_a: list[str], text_b: list[str]) -> pd.DataFrame:
        texts = list(dict.fromkeys([*text_a, *text_b]))
        z = self.encode(texts)
        index = {t: i for i, t in enumerate(texts)}
        scores = (z[[index[t] for t in text_a]] * z[[index[t] for t in text_b]]).sum(1)
        threshold = float(self.config["threshold"])
        return pd.DataFrame({"score": [float(s) for s in scores], "match": [bool(s >= threshold) for s in scores]})

    def search_faq(self, queries: list[str], top_k: int) -> pd.DataFrame:
        if not self.faq_ids:
            raise bad_input("this model was exported without an FAQ (--faq): query requests are not available")
        """The top-k entries by cosine, without ``match``: the pair threshold was chosen on pairs, not on FAQ
        queries (with it nearly every top-5 answer "matched"), and no FAQ threshold is calibrated at export."""
        z = self.encode(queries)
        scores = z @ self.faq_embeddings.T
        k = min(top_k, len(self.faq_ids))
        rows = []
        for row in scores:
            best = np.argsort(-row, kind="stable")[:k]
            answers = [{"faq_id": self.faq_ids[j], "faq_text": self.faq_texts[j], "score": float(row[j])}
                       for j in best]
            rows.append({**answers[0], "answers": answers})
        return pd.DataFrame(rows, columns=["faq_id", "faq_text", "score", "answers"])
