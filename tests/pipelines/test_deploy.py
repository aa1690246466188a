"""export -> promote -> `mlflow models serve`, on tiny models, against torch ``encode``."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.export.onnx_export import export_onnx
from components.student.lora_encoder import PROMPTS, EncoderConfig, LoraEncoder
from pipelines import _export_gates, export, promote, train
from pipelines.evaluate import load_trained_encoder
from serving.onnx_pyfunc import COMPONENT_MODULES, OnnxTextEncoder
from tests.tiny_models import random_texts, tiny_llama, tiny_tokenizer

FAST = ["--max-steps", "3", "--rank", "4", "--lora-alpha", "8", "--batch-size", "8", "--max-length", "16",
        "--precision", "fp32"]
NAME = "flipkd-test"
FAQ = [("reset", "how do i reset my password"), ("lost", "card lost or stolen"), ("refund", "refund for my order"),
       ("parcel", "where is the parcel"), ("fee", "what is the fee")]
SERVE_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def migrated_store(tmp_path_factory):
    """An empty tracking store with MLflow's tables made once: creating them takes seconds per store."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def _fast_store(migrated_store, tmp_path):
    shutil.copy(migrated_store, tmp_path / "mlflow.db")


def newest_run(client):
    exp = client.get_experiment_by_name("t")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])[0]


def train_run(client, tiny_model_args, *extra):
    result = CliRunner().invoke(train.cli, tiny_model_args + FAST + list(extra))
    assert result.exit_code == 0, result.output
    return newest_run(client).info.run_id


def run_export(client, *args):
    result = CliRunner().invoke(export.cli, ["--no-progress", "--experiment", "t", "--threads", "1", *args])
    return result, newest_run(client)


# ------------------------------------------------------------------------------------------ HTTP helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(port: int, payload: dict) -> tuple[int, dict | str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        body = err.read().decode(errors="replace")
        with contextlib.suppress(ValueError):
            body = json.loads(body)
        return err.code, body


@contextlib.contextmanager
def served(model_uri: str, cwd: Path):
    """The real `mlflow models serve` on 127.0.0.1; waits for /ping (bounded) and stops its process group."""
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_cli)] if mlflow_cli.exists() else [sys.executable, "-m", "mlflow"]
    log = open(cwd / "serve.log", "wb")  # noqa: SIM115 - closed in finally
    env = {**os.environ, "FLIPKD_ONNX_THREADS": "1"}
    proc = subprocess.Popen([*command, "models", "serve", "-m", model_uri, "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port), "-w", "1"], cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n"
                            f"{(cwd / 'serve.log').read_text(errors='replace')[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            if time.monotonic() > deadline:
                pytest.fail(f"no /ping answer within {SERVE_TIMEOUT_S} s:\n"
                            f"{(cwd / 'serve.log').read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        log.close()


# ------------------------------------------------------------------------------------------ tests


PLAIN = PROMPTS["none"]  # the cases below vary the plain reading, not the PromptEOL default
PROMPT_CASES = [(PLAIN, 16), ({**PLAIN, "instruction": "alpha beta "}, 16), ({**PLAIN, "suffix": " gamma delta"}, 16),
           ({"instruction": "alpha ", "suffix": " gamma delta", "append_eos": False}, 6),
           (PROMPTS["prompteol"], 24)]


@pytest.mark.parametrize(("prompt", "max_length"), PROMPT_CASES,
                         ids=["plain", "instruction", "suffix", "both_no_eos", "prompteol"])
def test_served_tokens_and_vectors_equal_torch(tmp_path, prompt, max_length):
    """The bundle tokenizes as LoraEncoder.tokenize does (prefix, truncated text, suffix, EOS)."""
    torch.manual_seed(0)
    enc = LoraEncoder(tiny_llama(), tiny_tokenizer(), EncoderConfig(rank=4, alpha=8, dropout=0.0,
                                                                    max_length=max_length, **prompt)).eval()
    for p in enc.trainable_parameters():
        torch.nn.init.normal_(p, std=0.2)
    export_onnx(enc.merged_encoder(), tmp_path / "onnx" / "model.onnx")
    bundle = export.write_bundle(enc, tmp_path / "onnx", tmp_path / "bundle", engine="fp32", limits=export.Limits())
    served = OnnxTextEncoder(bundle, threads=1)
    texts = [*random_texts(12, seed=3), " ".join(random_texts(8, seed=4))]  # the last one is truncated
    assert _export_gates.token_mismatches(enc, served, texts) == 0
    assert max(len(ids) for ids in served.token_ids(texts)) == max_length
    np.testing.assert_allclose(served.encode(texts, 4), enc.encode(texts).numpy(), atol=1e-4, rtol=0)


def test_serving_module_needs_no_torch():
    code = ("import sys; import serving.onnx_pyfunc as m; import serving.model_code; "
            "bad = [k for k in ('torch', 'transformers', 'peft') if k in sys.modules]; "
            "assert not bad, bad; "
            "used = sorted(k[len('components.'):] for k, v in sys.modules.items() "
            "if k.startswith('components.') and not hasattr(v, '__path__')); "
            "assert used == sorted(m.COMPONENT_MODULES), used; print('ok', m.FlipKDOnnxModel.__name__)")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok FlipKDOnnxModel" in out.stdout, out.stderr[-2000:]


def test_decision_rule():
    assert promote.decide(0.8, None, 0.0, True)[0] == "champion"
    assert promote.decide(0.8, 0.7, 0.05, True)[0] == "champion"
    assert promote.decide(0.8, 0.76, 0.05, True)[0] == "challenger"
    assert promote.decide(0.8, 0.8, 0.0, True)[0] == "challenger"  # equal is not better
    assert promote.decide(0.9, None, 0.0, False) == ("challenger", "refused: its parity checks failed")


@pytest.mark.parametrize("args,match", [
    (["--faq", "missing.csv"], "no such file"),
    (["--faq", "faq_no_text.csv"], "missing column 'text'"),
    (["--faq", "faq_dup.csv"], "duplicate faq_id"),
    (["--faq", "faq_invisible.csv"], "row 2, field 'text': empty or non-text FAQ text"),
    (["--top-k", "0"], "top-k"),
    (["--dev", "nope.jsonl"], "no such file"),
    (["--calibration", "nope.csv"], "no such file"),
])
def test_export_bad_input_is_exit_2_before_any_run(mlflow_env, tmp_path, args, match):
    (tmp_path / "faq_no_text.csv").write_text("faq_id,question\n1,hello\n")
    (tmp_path / "faq_dup.csv").write_text("faq_id,text\n1,hello\n1,again\n")
    (tmp_path / "faq_invisible.csv").write_text("faq_id,text\n1,hello\n2,\u200b\u2060\n", encoding="utf-8")
    result = CliRunner().invoke(export.cli, ["--model", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert match in result.output
    assert mlflow_env.get_experiment_by_name("flipkd") is None or not mlflow_env.search_runs(
        [mlflow_env.get_experiment_by_name("flipkd").experiment_id])


def test_promote_bad_input_is_exit_2(mlflow_env):
    runner = CliRunner()
    assert runner.invoke(promote.cli, []).exit_code == 2
    result = runner.invoke(promote.cli, ["--run-id", "0" * 32])
    assert result.exit_code == 2 and "no run" in result.output
    result = runner.invoke(promote.cli, ["--model-uri", "s3://x"])
    assert result.exit_code == 2 and "runs:/ or models:/" in result.output


def test_train_export_promote_serve(mlflow_env, tiny_model_args, tmp_path):
    client = mlflow_env
    faq_file = tmp_path / "faq.csv"
    pd.DataFrame({"faq_id": [f for f, _ in FAQ], "text": [t for _, t in FAQ]}).to_csv(faq_file, index=False)

    # 1. a trained run, exported with its FAQ, fp32 forced (so that the served scores equal torch's to 1e-4)
    first = train_run(client, tiny_model_args)
    result, exported = run_export(client, "--model", first, "--faq", str(faq_file), "--top-k", "3", "--serve", "fp32")
    assert result.exit_code == 0, result.output
    assert "deployable" in result.output and "serves fp32 (as asked" in result.output
    tags, metrics, params = exported.data.tags, exported.data.metrics, exported.data.params
    assert tags["flipkd.deployable"] == "true" and tags["flipkd.source_run"] == first
    assert tags["flipkd.served_engine"] == "fp32" and params["engines"] == "fp32"
    assert params["exporter"] == "torchscript" and int(params["opset"]) >= 17 and params["exporter_why"]
    assert metrics["fp32_max_abs_diff"] <= 1e-4 and metrics["tokenizer_mismatches"] == 0
    for key in ("served_min_cosine", "served_flipped_pairs", "served_flipped_clear_pairs", "served_b32_tps", "dev_f1",
                "torch_dev_f1"):
        assert np.isfinite(metrics[key]), key
    # the lean model: the served ONNX file alone, the serving code and only the component modules it imports
    model_dir = Path(download_artifacts(f"runs:/{exported.info.run_id}/model"))
    assert [p.name for p in model_dir.rglob("*.onnx*")] == ["model.onnx"]
    shipped = model_dir / "code" / "components"
    modules = sorted(p.relative_to(shipped).as_posix() for p in shipped.rglob("*.py") if p.name != "__init__.py")
    assert modules == sorted(f"{m.replace('.', '/')}.py" for m in COMPONENT_MODULES)
    assert all((p.parent / "__init__.py").is_file() for p in shipped.rglob("*.py"))
    assert {"onnx_pyfunc.py", "request_batcher.py", "model_code.py"} <= {
        p.name for p in (model_dir / "code" / "serving").glob("*.py")}
    # dev_f1 is the served engine's; not asserted equal to torch's: the stored threshold is itself a dev score,
    # so the pair sitting on it can flip under 1e-7 of noise
    assert metrics["dev_f1"] == metrics["fp32_dev_f1"]

    # 2. promote: the first version becomes champion, with its gate metrics as version tags
    result = CliRunner().invoke(promote.cli, ["--run-id", exported.info.run_id, "--name", NAME])
    assert result.exit_code == 0, result.output
    assert "-> @champion" in result.output and "no champion yet" in result.output
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert champion.run_id == exported.info.run_id
    assert float(champion.tags["fp32_max_abs_diff"]) == pytest.approx(metrics["fp32_max_abs_diff"])
    assert {"dev_f1", "served_min_cosine", "served_flipped_pairs", "served_b32_tps"} <= set(champion.tags)
    # promoting the same run again registers nothing new
    again = CliRunner().invoke(promote.cli, ["--run-id", exported.info.run_id, "--name", NAME])
    assert again.exit_code == 0 and "already the champion" in again.output
    assert len(client.search_model_versions(f"name='{NAME}'")) == 1

    # 3. a second, barely trained model must beat the champion by more than the margin: it stays challenger
    second = train_run(client, tiny_model_args, "--max-steps", "1", "--learning-rate", "1e-9", "--seed", "1")
    result, exported2 = run_export(client, "--model", f"runs:/{second}/student", "--serve", "fp32")
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(promote.cli, ["--run-id", exported2.info.run_id, "--name", NAME, "--margin", "1.0"])
    assert result.exit_code == 0, result.output
    assert "-> @challenger" in result.output and "refused" in result.output
    assert client.get_model_version_by_alias(NAME, "champion").version == champion.version
    assert client.get_model_version_by_alias(NAME, "challenger").run_id == exported2.info.run_id

    # 4. an int8 engine asked for that misses its gate (a min cosine of 1.0 no quantised model reaches): exit 2, no
    #    model, not promotable, and the message names what does deploy
    result, failed = run_export(client, "--model", first, "--serve", "int8", "--int8-min-cosine", "1.0")
    assert result.exit_code == 2, result.output
    assert "not deployable" in result.output and "int8_rowwise min cosine" in result.output
    assert "--serve fp32" in result.output and "--dev" in result.output
    assert failed.data.tags["flipkd.deployable"] == "false" and failed.info.status == "FINISHED"
    assert "int8" in failed.data.tags["flipkd.not_deployable_reason"]
    refused = CliRunner().invoke(promote.cli, ["--run-id", failed.info.run_id, "--name", NAME])
    assert refused.exit_code == 2 and "no deployable model" in refused.output
    #    the same gate under --serve auto (the default): every int8 engine is refused, fp32 is served
    result, auto = run_export(client, "--model", first, "--int8-min-cosine", "1.0", "--speed-texts", "8")
    assert result.exit_code == 0, result.output
    assert auto.data.tags["flipkd.served_engine"] == "fp32" and auto.data.params["engines"] == ",".join(export.ENGINES)
    assert auto.data.params["calibration"] == "demo train split" and int(auto.data.params["calibration_texts"]) > 0
    assert all(auto.data.metrics[f"{e}_gate_passed"] == 0 for e in export.ENGINES if e != "fp32")
    assert set(k[:-len("_tps")] for k in auto.data.metrics if k.endswith("_tps") and k != "served_b32_tps") == {
        "fp32"}  # only the engines that passed were timed

    # 5. in-process: bad input is INVALID_PARAMETER_VALUE (HTTP 400)
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    for bad in (pd.DataFrame({"text_a": ["x"]}), pd.DataFrame({"text": [""]}), pd.DataFrame({"other": ["x"]}),
                pd.DataFrame({"text": ["\u200b\ufeff"]}), pd.DataFrame({"query": ["\u2060"]}),
                pd.DataFrame({"text": ["a" * 5000]}), pd.DataFrame({"text": ["x"] * 300})):
        with pytest.raises(MlflowException) as err:
            model.predict(bad)
        assert err.value.error_code == "INVALID_PARAMETER_VALUE", err.value.message

    # 6. the real scoring server, against torch encode of the champion's training run
    encoder = load_trained_encoder(first)
    threshold = encoder.config.threshold
    text_a, text_b = random_texts(5, seed=11), random_texts(5, seed=12)
    queries = random_texts(3, seed=13)
    z = {t: v for t, v in zip(text_a + text_b + queries, encoder.encode(text_a + text_b + queries).numpy(),
                              strict=True)}
    z_faq = encoder.encode([t for _, t in FAQ]).numpy()
    expected_pairs = [float(z[a] @ z[b]) for a, b in zip(text_a, text_b, strict=True)]
    pair_payloads = {
        "dataframe_split": {"dataframe_split": {"columns": ["text_a", "text_b"],
                                                "data": [list(p) for p in zip(text_a, text_b, strict=True)]}},
        "dataframe_records": {"dataframe_records": [{"text_a": a, "text_b": b}
                                                    for a, b in zip(text_a, text_b, strict=True)]},
        "inputs": {"inputs": {"text_a": text_a, "text_b": text_b}},
    }
    with served(f"models:/{NAME}@champion", tmp_path) as port:
        for form, payload in pair_payloads.items():
            status, body = post(port, payload)
            assert status == 200, (form, body)
            scores = [p["score"] for p in body["predictions"]]
            np.testing.assert_allclose(scores, expected_pairs, atol=1e-4, err_msg=form)
            assert [p["match"] for p in body["predictions"]] == [s >= threshold for s in scores]

        text_payloads = [{"dataframe_split": {"columns": ["text"], "data": [[t] for t in text_a]}},
                         {"dataframe_records": [{"text": t} for t in text_a]},
                         {"inputs": {"text": text_a}}]
        for payload in text_payloads:
            status, body = post(port, payload)
            assert status == 200, body
            got = np.array([p["embedding"] for p in body["predictions"]])
            np.testing.assert_allclose(got, np.stack([z[t] for t in text_a]), atol=1e-4)

        faq_payloads = [{"dataframe_split": {"columns": ["query"], "data": [[q] for q in queries]}},
                        {"dataframe_records": [{"query": q} for q in queries]},
                        {"inputs": {"query": queries}},
                        {"dataframe_records": [{"query": q} for q in queries], "params": {"top_k": 2}}]
        for payload in faq_payloads:
            status, body = post(port, payload)
            assert status == 200, body
            k = payload.get("params", {}).get("top_k", 3)
            for query, hit in zip(queries, body["predictions"], strict=True):
                # no FAQ threshold is calibrated: no `match` on FAQ answers
                assert "match" not in hit and not any("match" in a for a in hit["answers"])
                torch_scores = {f: float(z[query] @ z_faq[i]) for i, (f, _) in enumerate(FAQ)}
                assert len(hit["answers"]) == k and hit["faq_id"] == hit["answers"][0]["faq_id"]
                for answer in hit["answers"]:
                    assert answer["score"] == pytest.approx(torch_scores[answer["faq_id"]], abs=1e-4)
                    assert answer["faq_text"] == dict(FAQ)[answer["faq_id"]]
                best = sorted(torch_scores.values(), reverse=True)[:k]
                np.testing.assert_allclose([a["score"] for a in hit["answers"]], best, atol=1e-4)

        for bad in ({"dataframe_records": [{"text_a": "only one side"}]},
                    {"dataframe_records": [{"text": "   "}]},
                    {"dataframe_records": [{"text": 42}]},
                    {"dataframe_records": [{"text": "x" * 4001}]},
                    {"dataframe_records": [{"text": "x"}] * 257},
                    {"dataframe_records": [{"query": "x"}], "params": {"top_k": 0}}):
            status, body = post(port, bad)
            assert status == 400, (bad if len(str(bad)) < 200 else str(bad)[:200], body)
