"""Warnings in one line, each once per process (a `main` chain), and no progress-bar redraws into a log file."""

from __future__ import annotations

import warnings

from click.testing import CliRunner

from components.data.demo import write_demo
from pipelines import _console, main, prepare
from tests.pipelines.test_main import chain_args


def test_python_warnings_are_one_line_once(capsys):
    _console.setup_console()
    for _ in range(3):
        warnings.warn("MLCL loss: no anchor in this batch", RuntimeWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err.count("warning: MLCL loss: no anchor in this batch") == 1
    assert "RuntimeWarning" not in err and "warnings.warn" not in err  # no category, no source line


def test_the_leakage_warning_comes_once_per_chain(mlflow_env, tmp_path, tiny_llama_dir, tiny_bert_dir, capsys):
    paths = write_demo(tmp_path / "demo")
    leaky = tmp_path / "dev.jsonl"  # the dev file repeats a training pair: its texts are on two sides
    leaky.write_text(paths["dev"].read_text() + paths["train"].read_text().splitlines()[0] + "\n")
    args = chain_args(tiny_llama_dir, tiny_bert_dir)
    result = CliRunner().invoke(
        main.cli, args + ["--train", str(paths["train"]), "--dev", str(leaky), "--test", str(paths["test"])])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("appear in more than one split") == 1


def test_no_carriage_returns_when_stderr_is_not_a_terminal(mlflow_env, tmp_path):
    result = CliRunner().invoke(prepare.cli, ["--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 0
    assert prepare.cli.make_context("x", []).params["progress"] is False  # CliRunner's stderr is no terminal
    assert prepare.cli.make_context("x", ["--progress"]).params["progress"] is True
    assert "\r" not in result.stderr
