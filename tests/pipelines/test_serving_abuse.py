"""Hostile and malformed requests against the real `mlflow models serve` of a tiny exported model.

One served model per module (train -> export fp32 with an FAQ -> ``mlflow models serve`` on 127.0.0.1), then one
table of bad requests: each must get a 4xx and a JSON body whose message says what is wrong. Afterwards the server
still answers correct requests with exactly the scores it gave before the abuse.
"""

import contextlib
import http.client
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.pipelines.test_deploy import FAQ, REQUEST_TIMEOUT_S, post, run_export, served, train_run
from tests.tiny_models import random_texts

MAX_ROWS, MAX_CHARS, TOP_K = 256, 4000, 3


@dataclass
class Exported:
    work: Path
    client: MlflowClient
    train_run: str  # the training run (its adapter is runs:/ID/student)
    export_run: str  # the export run (its pyfunc model is runs:/ID/model)


@contextlib.contextmanager
def trained_and_exported(work: Path, migrated_store: Path, tiny_llama_dir: Path, tiny_bert_dir: Path):
    """A private tracking store in ``work`` (set for this process and any server it starts), a tiny student
    trained there and exported (fp32 served, with the FAQ); MLflow's global state is restored on exit."""
    shutil.copy(migrated_store, work / "mlflow.db")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    previous_uri, threads = mlflow.get_tracking_uri(), torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        patch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        patch.setenv("FLIPKD_CACHE_DIR", str(work / "cache"))
        patch.chdir(work)
        mlflow.set_tracking_uri(uri)
        torch.set_num_threads(1)
        try:
            client = MlflowClient(uri)
            faq_file = work / "faq.csv"
            pd.DataFrame({"faq_id": [f for f, _ in FAQ], "text": [t for _, t in FAQ]}).to_csv(faq_file, index=False)
            tiny = ["--student", str(tiny_llama_dir), "--teacher", str(tiny_bert_dir), "--no-progress",
                    "--experiment", "t"]
            trained = train_run(client, tiny)
            result, exported = run_export(client, "--model", trained, "--faq", str(faq_file), "--top-k", str(TOP_K),
                                          "--serve", "fp32", "--max-rows", str(MAX_ROWS), "--max-chars",
                                          str(MAX_CHARS))
            assert result.exit_code == 0, result.output
            yield Exported(work, client, trained, exported.info.run_id)
        finally:
            torch.set_num_threads(threads)
            while mlflow.active_run():
                mlflow.end_run()
            mlflow.set_tracking_uri(previous_uri)


@dataclass
class Deployed:
    port: int
    work: Path
    pairs: dict  # a correct pair request
    queries: dict  # a correct FAQ request
    baseline: dict  # request name -> the response body before any abuse


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, migrated_store, tiny_llama_dir, tiny_bert_dir):
    """The exported tiny model served by `mlflow models serve`; the baseline answers recorded first."""
    work = tmp_path_factory.mktemp("served")
    with trained_and_exported(work, migrated_store, tiny_llama_dir, tiny_bert_dir) as exported:
        text_a, text_b = random_texts(6, seed=21), random_texts(6, seed=22)
        pairs = {"dataframe_records": [{"text_a": a, "text_b": b} for a, b in zip(text_a, text_b, strict=True)]}
        queries = {"inputs": {"query": random_texts(4, seed=23)}}
        with served(f"runs:/{exported.export_run}/model", work) as port:
            baseline = {}
            for name, payload in (("pairs", pairs), ("queries", queries)):
                status, body = post(port, payload)
                assert status == 200, (name, body)
                baseline[name] = body
            yield Deployed(port, work, pairs, queries, baseline)


def send(port: int, body: bytes, content_type: str | None) -> tuple[int, str | None, str]:
    """POST raw bytes to /invocations (no Content-Type header when None): (status, content type, text)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request("POST", "/invocations", body=body,
                           headers={"Content-Type": content_type} if content_type else {})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read().decode(errors="replace")
    finally:
        connection.close()


def _records(*rows: dict) -> dict:
    return {"dataframe_records": list(rows)}


def _nested(depth: int) -> bytes:
    return b'{"dataframe_records": [{"text": ' + b"[" * depth + b'"x"' + b"]" * depth + b"}]}"


JSON = "application/json"

# id, payload (a JSON-able value, or raw bytes), content type, expected status, keyword of the message
CASES = [
    pytest.param(_records({"foo": "x", "bar": "y"}), JSON, 400, "no recognised column", id="unknown-columns"),
    pytest.param(_records({"text_a": "only one side"}), JSON, 400, "missing column 'text_b'", id="text_a-without-b"),
    pytest.param(_records({"text": 42}), JSON, 400, "expected a string, got int", id="text-is-a-number"),
    pytest.param(_records({"text": ["a", "b"]}), JSON, 400, "expected a string, got list", id="text-is-a-list"),
    pytest.param(_records({"text": {"a": "b"}}), JSON, 400, "expected a string, got dict", id="text-is-a-dict"),
    pytest.param(_records({"text": None}), JSON, 400, "expected a string, got null", id="text-is-null"),
    pytest.param(b'{"dataframe_records": [{"text": NaN}]}', JSON, 400, "got null", id="text-is-NaN"),
    pytest.param(_records({"text_a": "", "text_b": "x"}), JSON, 400, "empty text", id="empty-string"),
    pytest.param(_records({"query": "   "}), JSON, 400, "empty text", id="blank-string"),
    pytest.param(_records({"text": "\u200b\u200b"}), JSON, 400, "invisible characters", id="zero-width-only"),
    pytest.param(_records({"text_a": "\ufeff\u2060\u00ad", "text_b": "x"}), JSON, 400, "empty text",
                 id="bom-word-joiner-soft-hyphen"),
    pytest.param(_records({"query": "\u3164\ufe0f\u200d"}), JSON, 400, "empty text", id="hangul-filler-selector"),
    pytest.param({"dataframe_records": []}, JSON, 400, "no rows and no recognised column", id="zero-rows-records"),
    pytest.param({"inputs": {"text": []}}, JSON, 400, "no rows", id="zero-rows-inputs"),
    pytest.param(_records(*[{"text": "x"}] * (MAX_ROWS + 1)), JSON, 400, f"limit is {MAX_ROWS}",
                 id="rows-over-cap"),
    pytest.param(_records({"text": "x" * 1_000_000}), JSON, 400, f"the limit is {MAX_CHARS}", id="1MB-text"),
    pytest.param(b'{"dataframe_records": [{"text": "x"}', JSON, 400, "valid JSON", id="invalid-json"),
    pytest.param(b"\xff\xfe not utf-8", JSON, 400, "valid JSON", id="not-utf8"),
    pytest.param(b"text\nhello\n", "text/plain", 415, "content types", id="content-type-text-plain"),
    pytest.param(b"<text>hello</text>", "application/xml", 415, "content types", id="content-type-xml"),
    pytest.param([{"text": "x"}], JSON, 400, "received a list", id="json-list"),
    pytest.param("hello", JSON, 400, "unexpected input type", id="json-string"),
    pytest.param({"text": ["x"]}, JSON, 400, "exactly one of the input fields", id="no-format-key"),
    pytest.param({"dataframe_split": {"columns": ["text_a", "text_b"], "data": [["x"]]}}, JSON, 400,
                 "2 columns passed, passed data had 1 columns",
                 id="split-columns-vs-data"),
    pytest.param({"dataframe_split": {"columns": ["text"], "data": [["x", "y"]]}}, JSON, 400,
                 "1 columns passed, passed data had 2 columns",
                 id="split-data-wider-than-columns"),
    pytest.param({"inputs": {"text": ["x"]}, "dataframe_records": [{"text": "x"}]}, JSON, 400,
                 "exactly one of the input fields", id="inputs-and-records"),
    pytest.param({**_records({"query": "x"}), "params": {"top_k": -1}}, JSON, 400, "top_k must be in 1..100",
                 id="top_k-negative"),
    pytest.param({**_records({"query": "x"}), "params": {"top_k": "many"}}, JSON, 400,
                 "failed to validate type and shape for 'top_k'", id="top_k-string"),
    pytest.param({**_records({"query": "x"}), "params": {"top_k": 1.5}}, JSON, 400,
                 "failed to validate type and shape for 'top_k'", id="top_k-float"),
    pytest.param({**_records({"query": "x"}), "params": {"top_k": 10**9}}, JSON, 400, "top_k must be in 1..100",
                 id="top_k-huge"),
    pytest.param(_nested(50), JSON, 400, "expected a string, got list", id="nested-50"),
    # Two requests MLflow's scoring server (not flipkd) answers with 500 "Internal Server Error" (text/plain): its
    # json.loads catches JSONDecodeError but not RecursionError, and it calls .split on a missing Content-Type
    # header. Both fail before the pyfunc is called; strict xfails, so a fixed MLflow turns them into failures.
    pytest.param(_nested(100_000), JSON, 400, "JSON", id="nested-100k", marks=pytest.mark.xfail(
        strict=True, raises=AssertionError, reason="MLflow 3.x scoring server: RecursionError in json.loads -> 500")),
    pytest.param(b'{"dataframe_records": [{"text": "x"}]}', None, 415, "content types", id="no-content-type",
                 marks=pytest.mark.xfail(strict=True, raises=AssertionError,
                                         reason="MLflow 3.x scoring server: no Content-Type -> 500")),
    pytest.param(b'{"dataframe_records": [{"text": "x"}]}', "application/json; charset=latin-1", 415, "UTF-8",
                 id="charset-latin-1"),
]


@pytest.mark.parametrize("payload,content_type,status,keyword", CASES)
def test_hostile_request_is_a_clear_4xx(deployed, payload, content_type, status, keyword):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    got, media, text = send(deployed.port, body, content_type)
    shown = text if len(text) < 600 else text[:300] + " ... " + text[-300:]
    assert got == status, shown
    if status == 415:  # MLflow's own content-type check answers in text/plain, before any flipkd code runs
        assert media.startswith("text/plain") and keyword in text, (media, shown)
        return
    assert media == JSON, (media, shown)
    answer = json.loads(text)
    assert answer["error_code"] in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"), shown
    assert keyword.lower() in answer["message"].lower(), shown


OWN_MESSAGES = [  # (request, the model's whole message): it stands alone, without MLflow's dump of the input frame
    (_records({"text": "x" * 1_000_000}), f"text row 0: 1000000 characters, the limit is {MAX_CHARS} (the model "
                                          "reads only its first 15 tokens)"),
    (_records({"text": "fine"}, {"text": "\u200b"}), "text row 1: empty text (nothing but whitespace or invisible "
                                                     "characters)"),
    (_records({"text_a": "only one side"}), "missing column 'text_b': pairs need both text_a and text_b"),
]


@pytest.mark.parametrize("payload,message", OWN_MESSAGES, ids=["1MB-text", "zero-width", "missing-partner"])
def test_the_models_message_stands_alone(deployed, payload, message):
    got, _, text = send(deployed.port, json.dumps(payload).encode(), JSON)
    assert got == 400 and json.loads(text)["message"] == message, text[:500]


def test_still_serves_the_same_scores_after_the_abuse(deployed):
    for name, payload in (("pairs", deployed.pairs), ("queries", deployed.queries)):
        status, body = post(deployed.port, payload)
        assert status == 200, (name, body)
        assert body == deployed.baseline[name], name
    scores = [p["score"] for p in deployed.baseline["pairs"]["predictions"]]
    assert len(scores) == 6 and all(math.isfinite(s) for s in scores)
    hits = deployed.baseline["queries"]["predictions"]
    assert len(hits) == 4 and all(len(h["answers"]) == TOP_K for h in hits)
