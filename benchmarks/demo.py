"""The demo as a newcomer meets it: ``mlflow run . -e main --env-manager local`` on a fresh checkout's demo.

Runs the README's main-job command as a subprocess, reads the comparison it ends with (its ``summary.json``),
and writes ``benchmarks/results/demo.json`` and the ``demo`` section of ``benchmarks/RESULTS.md``, which the
README quotes: re-measuring the README's demo figures is this one command, ``python -m benchmarks.demo``.
Extra arguments go to ``mlflow run`` (for example ``-P epochs=1``).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from benchmarks import _results
from benchmarks._machine import cpu_flags

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "demo.json"
ROWS = (("student (flipkd)", "student"), ("teacher, fine-tuned", "teacher_finetuned"),
        ("teacher, base", "teacher_base"), ("all-positive baseline", "all_positive"))


def render_markdown(data: dict) -> str:
    split, s = data["summary"]["split"], data["summary"]
    lines = [f"Command: `{data['command']}` ({data['wall']} wall, peak RSS {data['peak_rss_gb']:.1f} GB; "
             f"{data['threads']} cores, CPU flags {', '.join(data['cpu_flags']) or 'none listed'}; "
             f"git {data['git_commit'][:10]}).", "",
             f"| on {split} | F1 at the dev threshold | average precision |", "|---|---|---|"]
    for label, key in ROWS:
        m = s[key]
        f1, ap = m.get(f"{split}_f1", m.get("f1")), m.get(f"{split}_average_precision", m.get("average_precision"))
        lines.append(f"| {label} | {f1:.3f} | {ap:.3f} |")
    lines += ["", f"MLflow parent run `{s['parent_run_id']}`, train run `{s['train_run_id']}`."]
    return "\n".join(lines)


def main(extra: list[str]) -> dict:
    command = ["mlflow", "run", ".", "-e", "main", "--env-manager", "local", *extra]
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    started = time.perf_counter()
    done = subprocess.run([mlflow, *command[1:]], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - started
    sys.stdout.write(done.stdout)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-5000:])
        raise SystemExit(f"demo: `{' '.join(command)}` failed with exit code {done.returncode}")
    found = re.findall(r"summary: (\S+summary\.json)", done.stdout)
    if not found:  # e.g. an extra argument that made mlflow print its help instead of running the job
        raise SystemExit(f"demo: `{' '.join(command)}` printed no 'summary: .../summary.json' line; nothing written")
    summary_path = found[-1]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    data = {"command": " ".join(command), "seconds": round(seconds, 1),
            "wall": f"{int(seconds // 60)}m{seconds % 60:02.0f}s",
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2,
            "threads": os.cpu_count(), "cpu_flags": cpu_flags(), "git_commit": commit or "unknown",
            "summary": json.loads(Path(summary_path).read_text())}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2, default=float) + "\n")
    markdown = render_markdown(data)
    _results.write_section("demo", markdown)
    print(f"\ndemo: {data['wall']} wall; results in {RESULTS} and the demo section of {_results.RESULTS_MD}")
    print(markdown)
    return data


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]})
@click.argument("mlflow_args", nargs=-1, type=click.UNPROCESSED)
def cli(mlflow_args: tuple[str, ...]) -> None:
    """Run the README's demo (`mlflow run . -e main --env-manager local`) and record its figures.

    Writes benchmarks/results/demo.json and the demo section of benchmarks/RESULTS.md (wall time, peak RSS,
    CPU flags, test F1 / AP of the student and both teachers). MLFLOW_ARGS go to `mlflow run` unchanged,
    e.g. `python -m benchmarks.demo -P epochs=1`.
    """
    main(list(mlflow_args))


if __name__ == "__main__":
    cli()
