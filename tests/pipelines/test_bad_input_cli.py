"""Every bad-input case of the data contract, end to end through an entry point: one message naming the
file, row and field, exit code 2, no traceback, no MLflow run left RUNNING, and nothing half-written."""

import pytest
from click.testing import CliRunner

from pipelines import prepare
from tests.components.data.test_contract import BAD_INPUT_CASES, _materialise


@pytest.mark.parametrize("case,name,content,pattern,row,field", BAD_INPUT_CASES, ids=[c[0] for c in BAD_INPUT_CASES])
def test_bad_data_file_through_the_cli(mlflow_env, tmp_path, case, name, content, pattern, row, field):
    inbox = tmp_path / "in"
    inbox.mkdir()
    path = _materialise(inbox, name, content)
    out = tmp_path / "out"
    result = CliRunner().invoke(prepare.cli, ["--data", str(path), "--output-dir", str(out), "--experiment", "t",
                                              "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(lines) == 1, result.output
    if lines[0].startswith("error:"):  # our message (click rejects a folder before we see it)
        assert str(path) in lines[0]
        if row is not None:
            assert f"row {row}" in lines[0]
        if field is not None:
            assert f"field '{field}'" in lines[0]
    assert not out.exists() or not any(out.iterdir())  # nothing half-written
    experiment = mlflow_env.get_experiment_by_name("t")
    runs = mlflow_env.search_runs([experiment.experiment_id]) if experiment else []
    assert all(r.info.status == "FAILED" for r in runs)


@pytest.mark.parametrize("uri", ["file:./mlruns", "file:///tmp/somewhere/mlruns", "./mlruns"])
def test_a_file_tracking_store_is_one_line_with_what_to_use(mlflow_env, monkeypatch, tmp_path, uri):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = CliRunner().invoke(prepare.cli, ["--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(f"error: MLFLOW_TRACKING_URI={uri} is a file store")
    assert "sqlite:///" in result.output
