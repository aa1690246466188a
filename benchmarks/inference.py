"""Inference benchmark: torch fp32 eager vs ONNX Runtime fp32 and int8, and the served model over HTTP.

In one run, on the packaged student (or ``--student``):

- texts/s of torch fp32 ``LoraEncoder.encode`` (eager, inference mode), ONNX fp32 and ONNX int8 (the serving
  path: tokenizers + ONNX Runtime) at batch 1 and 32, on short English customer-service sentences of the demo;
- the parity figures the ``export`` gates use (fp32 max abs diff, int8 min cosine, int8 dev F1 delta), the int8
  engines calibrated on demo texts outside the parity pairs, as ``export`` holds its calibration out of its gates;
- p50/p95 latency over HTTP on 127.0.0.1 of one pair and one FAQ query, against ``mlflow models serve`` of the
  int8 model (started and stopped here).

It trains nothing: ``--model`` takes a trained student (run id, runs:/, models:/ or folder); without it an
untrained LoRA encoder (A random, B zero: the base model's own representation) is measured, and the output
says so. Results go to ``benchmarks/results/inference.json``. ``--quick`` is a short functional check, not a
measurement.

    python -m benchmarks.inference --model RUN_ID
    python -m benchmarks.inference --quick --student path/to/tiny/model
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import click
import numpy as np
import torch

from benchmarks._machine import cpu_flags
from benchmarks._results import write_section
from components.data.demo import demo_pairs
from components.models import STUDENT_DEFAULT, load_student, resolve_student
from components.student.lora_encoder import EncoderConfig, LoraEncoder
from pipelines import _mlflow
from pipelines._export_gates import Gates, check_parity, choose_engine, measure_speed
from pipelines.evaluate import load_trained_encoder
from pipelines.export import ENGINES, Faq, Limits, add_faq, export_engines, held_out_texts, pyfunc_arguments
from serving.onnx_pyfunc import BATCHING_ENV, THREADS_ENV, OnnxTextEncoder

RESULTS = Path(__file__).resolve().parent / "results" / "inference.json"
SERVE_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 60


def _texts_and_dev(n_texts: int, n_dev: int):
    frame = demo_pairs(0)
    texts = list(dict.fromkeys([*frame["text_a"], *frame["text_b"]]))
    rng = np.random.default_rng(0)
    chosen = [texts[i] for i in rng.permutation(len(texts))[:n_texts]]
    dev = frame.sample(n=min(n_dev, len(frame)), random_state=0).reset_index(drop=True)
    dev["match"] = (dev["label"] >= 0.5).astype(int)
    faq_texts = list(dict.fromkeys(frame["text_b"]))[:40]
    # int8 calibration on texts the parity pairs do not hold, as export calibrates (held out from its gates)
    calibration = held_out_texts(texts, [*dev["text_a"], *dev["text_b"]], seed=0)
    return chosen, dev, Faq([f"faq-{i}" for i in range(len(faq_texts))], faq_texts), calibration


def _throughput(encode, texts: list[str], batch_size: int, repeats: int) -> float:
    encode(texts[:batch_size], batch_size)  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        encode(texts, batch_size)
        best = max(best, len(texts) / (time.perf_counter() - start))
    return best


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(port: int, payload: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def serve(model_path: Path | str, threads: int, log_path: Path, workers: int = 1, batching: bool = False):
    """``mlflow models serve`` on 127.0.0.1 with ``workers`` uvicorn processes of ``threads`` ONNX Runtime threads
    each, request batching on or off (bounded wait for /ping); the process group is stopped on exit."""
    port = _free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_cli)] if mlflow_cli.exists() else [sys.executable, "-m", "mlflow"]
    env = {**os.environ, THREADS_ENV: str(threads), BATCHING_ENV: "1" if batching else "0"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*command, "models", "serve", "-m", str(model_path), "--env-manager", "local",
                                 "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + SERVE_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"mlflow models serve exited ({proc.returncode}); see {log_path}")
                with contextlib.suppress(OSError):
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                        if response.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no /ping answer within {SERVE_TIMEOUT_S} s; see {log_path}")
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


def _latencies(port: int, payload: dict, n: int) -> list[float]:
    _post(port, payload)  # warm-up
    out = []
    for _ in range(n):
        start = time.perf_counter()
        _post(port, payload)
        out.append((time.perf_counter() - start) * 1000)
    return out


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def build_encoder(model: str | None, student: str, cache_dir: str | None, seed: int) -> tuple[LoraEncoder, str]:
    if model:
        return load_trained_encoder(model, None, cache_dir), f"trained student {model}"
    torch.manual_seed(seed)
    base, tokenizer = load_student(resolve_student(student, cache_dir))
    encoder = LoraEncoder(base, tokenizer, EncoderConfig(dropout=0.0, extra={"student": student})).eval()
    return encoder, (f"UNTRAINED LoRA encoder of {student} (A random, B zero: the base model's representation); "
                     f"speed is representative, F1 is not")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", default=None, help="Trained student (run id, runs:/, models:/ or folder); none: untrained.")
@click.option("--student", default=STUDENT_DEFAULT, show_default=True, help="Base model when --model is not given.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="Threads for torch and ONNX Runtime (and the server).")
@click.option("--texts", "n_texts", type=click.IntRange(min=1), default=256, show_default=True,
              help="Texts per throughput measurement.")
@click.option("--requests", "n_requests", type=click.IntRange(min=1), default=100, show_default=True,
              help="HTTP requests per latency measurement.")
@click.option("--dev-pairs", type=click.IntRange(min=2), default=200, show_default=True,
              help="Demo pairs for the parity figures.")
@click.option("--quick", is_flag=True, help="A short check that everything runs (16 texts, 5 requests, 12 pairs).")
@click.option("--output", type=click.Path(dir_okay=False), default=str(RESULTS), show_default=True)
@click.option("--cache-dir", default=None, help="flipkd cache folder (converted models).")
def cli(model, student, threads, n_texts, n_requests, dev_pairs, quick, output, cache_dir) -> dict:
    """Measure torch fp32, ONNX fp32 and ONNX int8 throughput, parity, and HTTP latency of the served model."""
    if quick:
        n_texts, n_requests, dev_pairs = min(n_texts, 16), min(n_requests, 5), min(dev_pairs, 12)
    _mlflow.setup_tracking(None)
    torch.set_num_threads(threads)
    texts, dev, faq, calibration = _texts_and_dev(n_texts, dev_pairs)
    encoder, what = build_encoder(model, student, cache_dir, seed=0)
    click.echo(f"model: {what}")
    repeats = 1 if quick else 3
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="flipkd-bench-") as tmp:
        work = Path(tmp)
        limits = Limits(top_k=5)
        dev_texts = list(dict.fromkeys([*dev["text_a"], *dev["text_b"]]))
        built = export_engines(encoder, work, list(ENGINES), limits, calibration_texts=calibration)
        bundles = built["bundles"]
        report = check_parity(encoder, bundles, dev, Gates(), threads=threads)
        parity, failures = report["metrics"], report["failures"]
        onnx = {engine: OnnxTextEncoder(folder, threads=threads) for engine, folder in bundles.items()}

        # torch eager as a server meets texts: each one new. The encoder's frozen-prefix cache (LoRA in the top
        # blocks) would serve the repeated timing passes from memory and run only the top blocks.
        encoder.prefix = None

        def torch_encode(batch, size):
            return encoder.encode(batch, batch_size=size)

        for size in (1, 32):
            results[f"torch_fp32_b{size}_tps"] = _throughput(torch_encode, texts, size, repeats)
            for engine, served in onnx.items():
                results[f"onnx_{engine}_b{size}_tps"] = _throughput(served.encode, texts, size, repeats)
        # the keys of earlier runs: ``int8`` was the blockwise engine
        for size in (1, 32):
            results[f"onnx_int8_b{size}_tps"] = results[f"onnx_int8_blockwise_b{size}_tps"]
        results.update({"fp32_max_abs_diff": parity["fp32_max_abs_diff"],
                        "int8_min_cosine": parity["int8_blockwise_min_cosine"],
                        "int8_dev_f1_delta": parity["int8_blockwise_dev_f1_delta"],
                        "torch_dev_f1": parity["torch_dev_f1"], "int8_dev_f1": parity["int8_blockwise_dev_f1"],
                        "pairs_near_threshold": parity["pairs_near_threshold"]})
        for engine in ENGINES:
            if engine != "fp32":
                results.update({f"{engine}_{k}": parity[f"{engine}_{k}"] for k in (
                    "min_cosine", "dev_f1_delta", "flipped_pairs", "flipped_clear_pairs", "dev_ap_delta",
                    "gate_passed")})
        # what `export` would serve here: the fastest engine passing the gates, timed as export times them
        speeds = {e: measure_speed(folder, dev_texts[:48], threads) for e, folder in bundles.items() if not failures[e]}
        served_engine = choose_engine("auto", failures, speeds)
        results["served_b32_tps"] = results[f"onnx_{served_engine}_b32_tps"]
        results["served_vs_torch_b32"] = results["served_b32_tps"] / results["torch_fp32_b32_tps"]

        import mlflow.pyfunc

        add_faq(bundles[served_engine], faq, threads)
        model_path = work / "pyfunc"
        pair = {"dataframe_split": {"columns": ["text_a", "text_b"], "data": [[dev["text_a"][0], dev["text_b"][0]]]}}
        query = {"dataframe_split": {"columns": ["query"], "data": [[dev["text_a"][1]]]}}
        mlflow.pyfunc.save_model(str(model_path), **pyfunc_arguments(bundles[served_engine], limits.top_k, dev[
            ["text_a", "text_b"]].head(2)))
        with serve(model_path, threads, work / "serve.log") as port:
            pair_ms = _latencies(port, pair, n_requests)
            faq_ms = _latencies(port, query, n_requests)
        results.update({"http_pair_p50_ms": statistics.median(pair_ms), "http_pair_p95_ms": _percentile(pair_ms, 95),
                        "http_faq_p50_ms": statistics.median(faq_ms), "http_faq_p95_ms": _percentile(faq_ms, 95)})
    results = {k: round(float(v), 2) if k.endswith(("_tps", "_ms")) else float(v) for k, v in results.items()}
    record = {**results, "served_engine": served_engine, "cpu_flags": cpu_flags(),
              "model": model or f"untrained:{student}", "untrained": model is None, "description": what,
              "quick": quick, "threads": threads, "texts": n_texts, "requests": n_requests,
              "parity_pairs": int(len(dev)), "calibration_texts": len(calibration),
              "exporter": built["export"]["exporter"],
              "opset": built["export"]["opset"], "int8_method": "blockwise",
              "int8_block_size": built["quantize"]["int8_blockwise"].get("block_size"),
              "int8_dynamic_fp32_down_proj": built["quantize"]["int8_dynamic"]["excluded_count"],
              "int8_rowwise_smoothing_alpha": built["quantize"]["int8_rowwise"].get("smoothing_alpha"),
              "gate_failures": {e: f for e, f in failures.items() if f},
              "representation_layer": encoder.layer_index, "machine": platform.machine(),
              "cpu_count": os.cpu_count(), "versions": _mlflow.package_versions()}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2), encoding="utf-8")
    width = max(map(len, results))
    for key, value in results.items():
        click.echo(f"{key:<{width}}  {value}")
    click.echo(f"wrote {output}" + ("  (quick check: not a measurement)" if quick else ""))
    if not quick and output == RESULTS:
        write_section("inference", markdown(record))
    return record


ENGINE_LABELS = {"fp32": "ONNX fp32", "int8_rowwise": "int8 `rowwise` (per-row scales, smoothed)",
                 "int8_rowwise_asym": "int8 `rowwise_asym` (per-row scales and zero points, smoothed)",
                 "int8_rowwise_outliers": "int8 `rowwise_outliers` (per-row scales, 16 channels per input fp32)",
                 "int8_blockwise": "int8 `blockwise` (MatMulNBits, blocks of 32)",
                 "int8_dynamic": "int8 `dynamic` (per tensor, down_proj fp32)"}


def markdown(record: dict) -> str:
    """The RESULTS.md section, rendered from the JSON record."""
    r = record
    torch32 = r["torch_fp32_b32_tps"]
    rows = [f"| torch fp32 eager | {torch32} | {r['torch_fp32_b1_tps']} | 1.00x | - | - | - |"]
    for engine in ENGINES:  # every engine export builds, in its order
        label = ENGINE_LABELS.get(engine, f"`{engine}`")
        if f"onnx_{engine}_b32_tps" not in r:
            continue
        if engine == "fp32":
            gate = f"max abs diff {r['fp32_max_abs_diff']:.1e}"
            cosine, flips = "1.0000", "0"
        else:
            cosine = f"{r[f'{engine}_min_cosine']:.4f}"
            flips = (f"{int(r[f'{engine}_flipped_pairs'])} ({int(r[f'{engine}_flipped_clear_pairs'])} off the "
                     f"threshold), AP {r[f'{engine}_dev_ap_delta']:+.4f}")
            gate = "passes" if r[f"{engine}_gate_passed"] else "; ".join(r.get("gate_failures", {}).get(engine, [])) \
                or "refused"
        served = " **(served)**" if engine == r.get("served_engine") else ""
        rows.append(f"| {label}{served} | {r[f'onnx_{engine}_b32_tps']} | {r[f'onnx_{engine}_b1_tps']} | "
                    f"{r[f'onnx_{engine}_b32_tps'] / torch32:.2f}x | {cosine} | {flips} | {gate} |")
    flags = " ".join(r.get("cpu_flags", [])) or "unknown"
    head = (f"Command: `python -m benchmarks.inference --model {r['model']}` ({r['description']}; {r['threads']} "
            f"threads, exporter {r['exporter']} opset {r['opset']}, {r['parity_pairs']} dev pairs for parity, int8 "
            f"calibrated on {r['calibration_texts']} other demo texts, "
            f"{int(r['pairs_near_threshold'])} of them within the decision margin of the threshold; "
            f"CPU flags: {flags}).")
    return "\n".join([
        head, "",
        "| engine | texts/s, batch 32 | texts/s, batch 1 | vs torch, batch 32 | min cosine | decisions changed "
        "(dev pairs) | gates |",
        "|---|---|---|---|---|---|---|", *rows, "",
        f"`export` here serves **{r.get('served_engine', '-')}** (the fastest engine passing the gates): "
        f"{r.get('served_b32_tps', '-')} texts/s at batch 32, {r.get('served_vs_torch_b32', 0):.2f}x torch fp32 "
        f"eager. Served over HTTP (1 worker, {r['threads']} ONNX Runtime threads): one pair p50 / p95 "
        f"{r.get('http_pair_p50_ms', '-')} / {r.get('http_pair_p95_ms', '-')} ms, one FAQ query p50 / p95 "
        f"{r.get('http_faq_p50_ms', '-')} / {r.get('http_faq_p95_ms', '-')} ms."])


if __name__ == "__main__":
    cli()
