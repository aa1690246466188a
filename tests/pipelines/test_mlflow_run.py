"""Entry points under `mlflow run`, as a user runs them: the run lands in the experiment the summary names.

The project is run from a git repository made of this working tree (a `file://` URI, the form of
`mlflow run <git URI> -e NAME`), with `--env-manager local` and the tiny models of the tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from pipelines import prepare

ROOT = Path(__file__).resolve().parents[2]
MLFLOW = str(Path(sys.executable).with_name("mlflow"))


@pytest.fixture(scope="module")
def project_repo(tmp_path_factory) -> Path:
    """A git repository of the working tree's tracked files as they are now (uncommitted changes included)."""
    repo = tmp_path_factory.mktemp("project") / "flipkd"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    git = ["git", "-c", "user.name=flipkd-test", "-c", "user.email=test@invalid", "-c", "init.defaultBranch=main"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run(git + cmd, cwd=repo, check=True)
    return repo


def mlflow_run(repo: Path, work: Path, entry_point: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
           "FLIPKD_CACHE_DIR": str(work / "cache")}
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(name, None)
    return subprocess.run([MLFLOW, "run", f"file://{repo}", "-e", entry_point, "--env-manager", "local", *args],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)


def the_run(work: Path):
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return run, client.get_experiment(run.info.experiment_id).name


@pytest.mark.parametrize("args, experiment", [([], "Default"), (["--experiment-name", "named"], "named")],
                         ids=["mlflow-default", "experiment-name"])
def test_mlflow_run_lands_where_the_summary_says(project_repo, tmp_path, args, experiment):
    result = mlflow_run(project_repo, tmp_path, "prepare", *args, "-P", f"output_dir={tmp_path / 'data'}")
    assert result.returncode == 0, result.stderr[-3000:]
    run, landed = the_run(tmp_path)
    assert landed == experiment and run.info.status == "FINISHED"
    assert f"run {run.info.run_id}, experiment {experiment!r}" in result.stdout


@pytest.mark.parametrize("argv, env, experiment", [([], None, "flipkd"), ([], "from-env", "from-env"),
                                                   (["--experiment", "opt"], "from-env", "opt")],
                         ids=["default", "MLFLOW_EXPERIMENT_NAME", "option-first"])
def test_python_m_lands_where_the_summary_says(mlflow_env, monkeypatch, argv, env, experiment):
    if env:
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", env)
    result = CliRunner().invoke(prepare.cli, argv)
    assert result.exit_code == 0, result.output
    (run,) = mlflow_env.search_runs([e.experiment_id for e in mlflow_env.search_experiments()])
    assert mlflow_env.get_experiment(run.info.experiment_id).name == experiment
    assert f"experiment {experiment!r}" in result.output



def test_train_from_a_git_uri(project_repo, tmp_path, tiny_llama_dir, tiny_bert_dir):
    """`mlflow run <git URI> -e train`: MLflow clones the project and runs it; the run records a trained student."""
    tiny = {"student": tiny_llama_dir, "teacher": tiny_bert_dir, "epochs": 1, "max_steps": 2, "rank": 4,
            "lora_alpha": 8, "batch_size": 8, "max_length": 16, "output_dir": tmp_path / "out"}
    params = [arg for key, value in tiny.items() for arg in ("-P", f"{key}={value}")]
    result = mlflow_run(project_repo, tmp_path, "train", "--experiment-name", "from-git", *params)
    assert result.returncode == 0, result.stderr[-3000:]
    run, landed = the_run(tmp_path)
    assert landed == "from-git" and run.info.status == "FINISHED"
    assert "experiment 'from-git'" in result.stdout
    assert run.data.tags["mlflow.source.type"] == "PROJECT" and run.data.tags["mlflow.project.entryPoint"] == "train"
    assert {"dev_f1", "dev_average_precision"} <= {k.split("/", 1)[-1] for k in run.data.metrics}
    assert (tmp_path / "out" / run.info.run_id / "summary.json").exists()  # where asked, not in MLflow's clone
