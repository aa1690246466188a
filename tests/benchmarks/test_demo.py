"""The demo benchmark's section: the comparison the main job ends with, as the README quotes it."""

from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner

from benchmarks import demo


def test_render_markdown_lists_every_model_on_the_split():
    metrics = {"test_f1": 0.8, "test_average_precision": 0.75, "dev_f1": 0.7}
    data = {"command": "mlflow run . -e main --env-manager local", "wall": "7m05s", "peak_rss_gb": 4.25, "threads": 2,
            "cpu_flags": ["avx2"], "git_commit": "0123456789abcdef",
            "summary": {"split": "test", "parent_run_id": "p" * 32, "train_run_id": "t" * 32, "student": metrics,
                        "teacher_finetuned": {"test_f1": 0.71, "test_average_precision": 0.7},
                        "teacher_base": {"test_f1": 0.676, "test_average_precision": 0.69},
                        "all_positive": {"f1": 0.621, "average_precision": 0.45}}}
    text = demo.render_markdown(data)
    assert "`mlflow run . -e main --env-manager local` (7m05s wall, peak RSS 4.2 GB; 2 cores" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows == ["| student (flipkd) | 0.800 | 0.750 |", "| teacher, fine-tuned | 0.710 | 0.700 |",
                    "| teacher, base | 0.676 | 0.690 |", "| all-positive baseline | 0.621 | 0.450 |"]


def test_help_explains_instead_of_running_the_job(monkeypatch):
    monkeypatch.setattr(demo.subprocess, "run", lambda *a, **k: pytest.fail("--help must not run mlflow"))
    result = CliRunner().invoke(demo.cli, ["--help"])
    assert result.exit_code == 0 and "MLFLOW_ARGS go to `mlflow run`" in result.output


def test_extra_arguments_reach_mlflow_and_a_run_without_summary_writes_nothing(monkeypatch, tmp_path):
    calls = []

    def fake_run(args, **kwargs):
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, stdout="no summary here\n", stderr="")

    monkeypatch.setattr(demo.subprocess, "run", fake_run)
    monkeypatch.setattr(demo, "RESULTS", tmp_path / "demo.json")
    result = CliRunner().invoke(demo.cli, ["-P", "epochs=1"])
    assert result.exit_code != 0 and "printed no 'summary: .../summary.json' line" in result.output
    assert calls[0][-2:] == ["-P", "epochs=1"] and not (tmp_path / "demo.json").exists()
