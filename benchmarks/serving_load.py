"""Serving load benchmark: many concurrent requests against ``mlflow models serve`` of a deployed flipkd model.

    python -m benchmarks.serving_load [--requests 2000] [--concurrency 8] [--model-uri models:/flipkd@champion]
    python -m benchmarks.serving_load --quick --model-uri runs:/RUN_ID/model

In one run it serves today's serving and the new one: today's serve settings (1 worker, 1 ONNX Runtime thread,
no request batching) on ``--old-model-uri`` (e.g. a model exported with ``--serve int8_blockwise``, the engine
export served before; default ``--model-uri``), then the new settings (``--workers``, ``--threads``,
``--batching``; by default the same settings, which measured fastest here) on ``--model-uri``, and, when both
differ, today's settings on ``--model-uri`` too. For each it starts
``mlflow models serve --env-manager local`` on 127.0.0.1 for ``--model-uri`` (a ``models:/`` or logged
model URI of the tracking store in ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``), then sends
``--requests`` requests from ``--concurrency`` client threads (urllib, one connection per request): a fixed
mix of pair requests (1-4 pairs), embedding requests (1-8 texts) and FAQ queries (1-2; left out, and said so,
when the model has no FAQ), built from the demo sentences. Every answer must be HTTP 200 with one prediction
per row; anything else counts as an error. The whole run is bounded: requests not started within
``--budget`` seconds count as errors, and each request times out after 60 s.

Reports throughput (requests/s), p50/p90/p99/max latency and the resident memory (RSS) of the server process
tree (the ``mlflow models serve`` process and the uvicorn process it starts, which holds the model) after
start-up, after the load and at its peak (sampled). Writes ``benchmarks/results/serving_load.json``
and the ``serving_load`` section of ``benchmarks/RESULTS.md``; ``--quick`` (100 requests) is a functional
check and writes neither.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import click
import numpy as np
import psutil

RESULTS = Path(__file__).resolve().parent / "results" / "serving_load.json"
REQUEST_TIMEOUT_S = 60
DEFAULT_MODEL_URI = "models:/flipkd@champion"


# ------------------------------------------------------------------------------------------ requests


def payload_mix(texts: list[str], queries: bool = True, n: int = 48, seed: int = 0) -> list[tuple[str, dict, int]]:
    """``n`` requests as (kind, JSON payload, rows): pairs, texts and (optionally) FAQ queries in turn."""
    rng = np.random.default_rng(seed)
    kinds = ["pairs", "texts", "query"] if queries else ["pairs", "texts"]
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        rows = int(rng.integers(1, {"pairs": 5, "texts": 9, "query": 3}[kind]))
        pick = [texts[int(j)] for j in rng.integers(0, len(texts), size=2 * rows)]
        if kind == "pairs":
            payload = {"dataframe_records": [{"text_a": a, "text_b": b} for a, b in zip(pick[:rows], pick[rows:],
                                                                                         strict=True)]}
        elif kind == "texts":
            payload = {"dataframe_split": {"columns": ["text"], "data": [[t] for t in pick[:rows]]}}
        else:
            payload = {"inputs": {"query": pick[:rows]}}
        out.append((kind, payload, rows))
    return out


def post_json(port: int, body: bytes, timeout: float = REQUEST_TIMEOUT_S) -> tuple[int, dict | str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")[:500]


def has_faq(port: int, text: str) -> bool:
    """Whether the served model answers FAQ queries (a model exported without ``--faq`` answers 400)."""
    status, body = post_json(port, json.dumps({"inputs": {"query": [text]}}).encode())
    if status == 200:
        return True
    if status == 400 and "without an FAQ" in str(body):
        return False
    raise RuntimeError(f"the served model does not answer a FAQ query: HTTP {status}: {str(body)[:300]}")


# ------------------------------------------------------------------------------------------ server memory


def server_processes(port: int) -> list[psutil.Process]:
    """The process tree serving ``port``: this process's descendants whose command line names the port, and
    their own descendants (``mlflow models serve`` and the uvicorn it execs)."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            if str(port) in proc.cmdline():
                found[proc.pid] = proc
                found.update({child.pid: child for child in proc.children(recursive=True)})
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return list(found.values())


def server_rss_by_process(port: int) -> dict[str, float]:
    """Resident memory (MB) of each process of the server tree, by ``pid program`` (``mlflow``, ``uvicorn``)."""
    out = {}
    for proc in server_processes(port):
        try:
            args = proc.cmdline()
            program = next((Path(a).name for a in args[:2] if "python" not in Path(a).name), Path(args[0]).name)
            out[f"{proc.pid} {program}"] = proc.memory_info().rss / 2**20
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, IndexError):
            continue
    return out


def server_rss_mb(port: int) -> float:
    """Resident memory of the server process tree, MB (0 when no such process is found)."""
    return sum(server_rss_by_process(port).values())


class RssSampler:
    """Peak RSS of the server tree, sampled every ``interval`` seconds in a background thread."""

    def __init__(self, port: int, interval: float = 0.25) -> None:
        self.port, self.interval, self.peak_mb = port, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        processes = server_processes(self.port)
        while not self._stop.is_set():
            total = 0
            for proc in processes:
                try:
                    total += proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ------------------------------------------------------------------------------------------ load


def run_load(port: int, mix: list[tuple[str, dict, int]], requests: int, concurrency: int,
             budget_s: float, timeout_s: float = REQUEST_TIMEOUT_S) -> dict:
    """``requests`` requests (the mix in turn) from ``concurrency`` threads; figures and errors.

    Bounded: a request not started within ``budget_s`` seconds is not sent and counts as an error, and each
    request times out after ``timeout_s``, so the run ends within about ``budget_s + timeout_s`` seconds.
    """
    bodies = [(kind, json.dumps(payload).encode(), rows) for kind, payload, rows in mix]
    counter = itertools.count()
    latencies: list[float | None] = [None] * requests
    errors: list[str] = []
    kinds: Counter = Counter()
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = time.monotonic() + budget_s

    def worker() -> None:
        while (i := next(counter)) < requests:
            kind, body, rows = bodies[i % len(bodies)]
            if time.monotonic() > deadline:
                with lock:
                    errors.append(f"request {i}: not sent, the {budget_s:g} s budget is spent")
                continue
            t0 = time.perf_counter()
            try:
                status, answer = post_json(port, body, timeout_s)
            except (OSError, ValueError) as err:  # connection errors, timeouts, a body that is not JSON
                status, answer = None, repr(err)
            elapsed = (time.perf_counter() - t0) * 1000
            ok = status == 200 and isinstance(answer, dict) and len(answer.get("predictions", [])) == rows
            with lock:
                kinds[kind] += 1
                if ok:
                    latencies[i] = elapsed
                else:
                    errors.append(f"request {i} ({kind}): HTTP {status}: {str(answer)[:200]}")

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=budget_s + timeout_s + 30)
    seconds = time.perf_counter() - start
    done = np.array([x for x in latencies if x is not None]) if any(x is not None for x in latencies) else None

    def pct(q: float) -> float:
        return float(np.percentile(done, q)) if done is not None else float("nan")

    ok = 0 if done is None else len(done)
    return {"requests": requests, "concurrency": concurrency, "ok": ok, "errors": requests - ok,
            "error_samples": errors[:5], "seconds": seconds, "throughput_rps": ok / seconds,
            "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99),
            "max_ms": float(done.max()) if done is not None else float("nan"), "mix": dict(kinds)}


def measure(port: int, mix: list[tuple[str, dict, int]], requests: int, concurrency: int, budget_s: float,
            warmup: int = 8) -> dict:
    """RSS after start-up, a short warm-up, the load (with the peak RSS sampled), RSS after."""
    rss_before = server_rss_mb(port)
    for _, payload, _ in mix[:warmup]:
        post_json(port, json.dumps(payload).encode())
    with RssSampler(port) as sampler:
        figures = run_load(port, mix, requests, concurrency, budget_s)
    by_process = server_rss_by_process(port)
    rss_after = sum(by_process.values())
    return {**figures, "rss_before_mb": rss_before, "rss_after_mb": rss_after,
            "rss_peak_mb": max(sampler.peak_mb, rss_after),
            "rss_after_by_process_mb": {k: round(v, 1) for k, v in by_process.items()}}


def summary(figures: dict) -> str:
    return (f"{figures['requests']} requests at concurrency {figures['concurrency']}: {figures['errors']} errors, "
            f"{figures['throughput_rps']:.1f} req/s, p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms, "
            f"max {figures['max_ms']:.1f} ms; server RSS {figures['rss_before_mb']:.0f} MB before, "
            f"{figures['rss_after_mb']:.0f} MB after (peak {figures['rss_peak_mb']:.0f} MB; after, by process: "
            + ", ".join(f"{k} {v:.0f} MB" for k, v in figures["rss_after_by_process_mb"].items()) + ")")


def settings_text(settings: dict) -> str:
    return (f"{settings['workers']} worker(s) x {settings['threads']} ONNX Runtime thread(s), request batching "
            f"{'on' if settings['batching'] else 'off'}")


COLUMNS = {"old": "today: old settings, old model", "old_same_model": "old settings, new model",
           "new": "new: new settings, new model"}


def write_results(record: dict, output: Path) -> None:
    """``output`` (JSON) and the ``serving_load`` section of ``benchmarks/RESULTS.md``."""
    from benchmarks import _results

    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    columns = [record[k] for k in COLUMNS if k in record]
    mix = ", ".join(f"{k} {v}" for k, v in sorted(record["mix"].items()))

    def row(label: str, cell) -> str:
        return f"| {label} | " + " | ".join(cell(c) for c in columns) + " |"

    old_uri = record["old"]["model_uri"]
    command = (f"python -m benchmarks.serving_load --requests {record['requests']} --concurrency "
               f"{record['concurrency']} --model-uri {record['model_uri']}"
               + (f" --old-model-uri {old_uri}" if old_uri != record["model_uri"] else ""))
    ratios = [f"new / old requests/s: **{record['new_requests_per_s'] / record['old_requests_per_s']:.2f}x**"]
    if "old_same_model" in record:
        ratios.append(f"new settings / today's settings on the same model: "
                      f"{record['new_requests_per_s'] / record['old_settings_same_model_requests_per_s']:.2f}x")
    _results.write_section("serving_load", "\n".join([
        f"Command: `{command}` (`mlflow models serve --env-manager local`, started once per column in one run; "
        f"{record['cpu_count']} CPUs, CPU flags {' '.join(record.get('cpu_flags', [])) or 'unknown'}; urllib "
        f"clients on the same machine, one connection per request).",
        "",
        "| figure | " + " | ".join(("old settings, same model" if key == "old" and old_uri == record["model_uri"]
                                    else label) for key, label in COLUMNS.items() if key in record) + " |",
        "|---|" + "---|" * len(columns),
        row("serve settings", lambda c: settings_text(c["settings"])),
        row("served engine (model)", lambda c: f"{c.get('served_engine') or '-'} (`{c['model_uri']}`)"),
        f"| requests (mix) | {record['requests']} ({mix}) |" + " the same |" * (len(columns) - 1),
        row("errors", lambda c: str(c["errors"])),
        row("throughput, requests/s", lambda c: f"{c['throughput_rps']:.1f}"),
        row("latency p50 / p90 / p99 / max, ms",
            lambda c: f"{c['p50_ms']:.1f} / {c['p90_ms']:.1f} / {c['p99_ms']:.1f} / {c['max_ms']:.1f}"),
        row("server RSS after start-up / after the load / peak, MB",
            lambda c: f"{c['rss_before_mb']:.0f} / {c['rss_after_mb']:.0f} / {c['rss_peak_mb']:.0f}"),
        "",
        "; ".join(ratios) + f". FAQ queries in the mix: {'yes' if record['faq'] else 'no (the model has no FAQ)'}.",
    ]))


# ------------------------------------------------------------------------------------------ command


def _served_engine(mlflow, uri: str) -> str | None:
    """The engine an export logged for the model at ``uri`` (None for a model without the tag); for a model's
    folder, the engine its serving config names (it may come from another tracking store)."""
    if Path(uri).is_dir():
        configs = sorted(Path(uri).glob("artifacts/*/flipkd_serving.json"))
        if not configs:
            raise click.ClickException(f"{uri} holds no flipkd model (no artifacts/*/flipkd_serving.json)")
        return json.loads(configs[0].read_text(encoding="utf-8")).get("engine")
    try:
        info = mlflow.models.get_model_info(uri)
    except Exception as err:  # any failure here means there is no model to serve
        raise click.ClickException(f"cannot resolve {uri} in {mlflow.get_tracking_uri()}: {str(err)[:300]}") from None
    return mlflow.MlflowClient().get_run(info.run_id).data.tags.get("flipkd.served_engine") if info.run_id else None


def _demo_texts() -> list[str]:
    from components.data.demo import demo_pairs

    frame = demo_pairs(0)
    return list(dict.fromkeys([*frame["text_a"], *frame["text_b"]]))


OLD_SETTINGS = {"workers": 1, "threads": 1, "batching": False}  # the serve settings before issue 21


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--requests", "n_requests", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 64), default=8, show_default=True, help="Client threads.")
@click.option("--model-uri", default=DEFAULT_MODEL_URI, show_default=True,
              help="The served model: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/model or models:/m-ID.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="New settings: uvicorn worker processes (mlflow models serve -w).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="New settings: ONNX Runtime intra-op threads per worker ($FLIPKD_ONNX_THREADS).")
@click.option("--batching/--no-batching", default=False, show_default=True,
              help="New settings: concurrent requests share ONNX Runtime runs ($FLIPKD_BATCH_REQUESTS).")
@click.option("--only-new", is_flag=True, help="Measure the new settings alone (a trial; nothing written).")
@click.option("--old-model-uri", default=None,
              help="The model today's settings serve (default: --model-uri), e.g. one exported with --serve "
                   "int8_blockwise, the engine export served before, or a logged model's folder from another "
                   "tracking store; then today's settings are also measured on --model-uri.")
@click.option("--budget", type=click.FloatRange(min=1), default=900.0, show_default=True,
              help="Seconds per setting after which no new request is started (the rest count as errors).")
@click.option("--quick", is_flag=True, help="A functional check: 100 requests, nothing written.")
@click.option("--output", type=click.Path(dir_okay=False), default=str(RESULTS), show_default=True)
def cli(n_requests, concurrency, model_uri, workers, threads, batching, only_new, old_model_uri, budget, quick,
        output) -> dict:
    """Throughput, latency and server memory of `mlflow models serve` under concurrent load, today's serve settings
    against the new ones in one run."""
    import mlflow

    from benchmarks._machine import cpu_flags
    from benchmarks.inference import serve
    from pipelines import _mlflow

    if quick:
        n_requests, budget = min(n_requests, 100), min(budget, 120.0)
    _mlflow.setup_tracking(None)
    os.environ.setdefault("MLFLOW_TRACKING_URI", mlflow.get_tracking_uri())  # the server resolves the same URI
    old_model_uri = old_model_uri or model_uri
    engines = {uri: _served_engine(mlflow, uri) for uri in dict.fromkeys([model_uri, old_model_uri])}
    served_engine = engines[model_uri]
    texts = _demo_texts()
    new_settings = {"workers": workers, "threads": threads, "batching": batching}
    settings = {"new": (model_uri, new_settings)}
    if not only_new:
        settings = {"old": (old_model_uri, OLD_SETTINGS), **settings}
        if old_model_uri != model_uri and new_settings != OLD_SETTINGS:
            settings = {**settings, "old_same_model": (model_uri, OLD_SETTINGS)}
    measured: dict[str, dict] = {}
    faq = True
    with tempfile.TemporaryDirectory(prefix="flipkd-serving-load-") as tmp:
        for name, (uri, setting) in settings.items():
            with serve(uri, setting["threads"], Path(tmp) / f"serve_{name}.log", workers=setting["workers"],
                       batching=setting["batching"]) as port:
                faq = has_faq(port, texts[0])
                mix = payload_mix(texts, queries=faq)
                figures = measure(port, mix, n_requests, concurrency, budget)
            measured[name] = {**{k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()},
                              "settings": setting, "model_uri": uri, "served_engine": engines[uri]}
            click.echo(f"{name} ({settings_text(setting)}; {uri}, {engines[uri]}): {summary(figures)}")
            for sample in figures["error_samples"]:
                click.echo(f"error: {sample}", err=True)
    if not faq:
        click.echo("note: the model has no FAQ; the mix has pairs and texts only")
    new = measured["new"]
    record = {**{k: v for k, v in new.items() if k != "settings"}, "new": new, "model_uri": model_uri,
              "served_engine": served_engine, "faq": faq, "threads": threads, "workers": workers,
              "batching": batching, "quick": quick, "machine": platform.machine(), "cpu_count": os.cpu_count(),
              "cpu_flags": cpu_flags(), "versions": _mlflow.package_versions(),
              "new_requests_per_s": new["throughput_rps"]}
    if "old" in measured:
        record.update(old=measured["old"], old_requests_per_s=measured["old"]["throughput_rps"])
        click.echo(f"new / old requests/s: {new['throughput_rps'] / measured['old']['throughput_rps']:.2f}x")
    if "old_same_model" in measured:
        same = measured["old_same_model"]
        record.update(old_same_model=same, old_settings_same_model_requests_per_s=same["throughput_rps"])
        click.echo(f"new / today's settings on the same model: {new['throughput_rps'] / same['throughput_rps']:.2f}x")
    if quick or only_new:
        click.echo("--quick / --only-new: results not written")
    else:
        write_results(record, Path(output))
        click.echo(f"wrote {output} and the serving_load section of benchmarks/RESULTS.md")
    return record


if __name__ == "__main__":
    cli()
