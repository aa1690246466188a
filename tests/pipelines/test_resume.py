"""Crash and resume: a real `python -m pipelines.train` process is SIGKILLed mid-training and resumed.

The killed process runs the real pipeline with one change injected from outside: from step 8 on, a training
step hangs (sleeps) instead of running. So the kill always lands after the checkpoint of step 6 and after
step 7 was logged (a step past the checkpoint that the resume must redo without logging it twice), and the
test never races a tiny model that trains 12 steps in a blink.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from components.training.checkpoint import latest_checkpoint, list_checkpoints, step_of
from pipelines import train

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = ["--max-steps", "12", "--checkpoint-every", "3", "--rank", "4", "--lora-alpha", "8", "--lora-dropout", "0.2",
           "--batch-size", "8", "--max-length", "16", "--precision", "fp32", "--learning-rate", "1e-3"]
STALL_AFTER = 7
CHILD = f"""
import runpy, sys, time
from components.training import trainer
step = trainer.Trainer.train_step
def stalled(self, index):
    if self.step >= {STALL_AFTER}:
        time.sleep(600)
    return step(self, index)
trainer.Trainer.train_step = stalled
sys.argv = ["pipelines.train", *sys.argv[1:]]
runpy.run_module("pipelines.train", run_name="__main__", alter_sys=True)
"""
FINAL = ("student/dev_f1", "student/dev_average_precision")


@pytest.fixture
def one_thread():
    """The child runs with OMP_NUM_THREADS=1; the same here, so every run does the same arithmetic (and fast)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def history(client, run_id, key="loss/total"):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def reference_run(tmp_path, monkeypatch, args, migrated_store):
    """The same options, uninterrupted, in a store and cache of its own (it runs while the child starts)."""
    shutil.copy(migrated_store, tmp_path / "reference.db")
    uri, saved_uri = f"sqlite:///{tmp_path / 'reference.db'}", os.environ["MLFLOW_TRACKING_URI"]
    saved_cache = os.environ["FLIPKD_CACHE_DIR"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("FLIPKD_CACHE_DIR", str(tmp_path / "reference_cache"))
    mlflow.set_tracking_uri(uri)
    try:
        result = CliRunner().invoke(train.cli, args)
        assert result.exit_code == 0, result.output
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
        return run.data.metrics, history(client, run.info.run_id)
    finally:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", saved_uri)
        monkeypatch.setenv("FLIPKD_CACHE_DIR", saved_cache)
        mlflow.set_tracking_uri(saved_uri)


def wait_until_stalled(child, checkpoints: Path, client, log: Path, timeout: float = 180) -> str:
    """The run id, once the step-6 checkpoint is published and step 7 is logged."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            pytest.fail(f"the training process ended (code {child.returncode}) before it was killed:\n"
                        f"{log.read_text()[-3000:]}")
        folders = list(checkpoints.glob("*")) if checkpoints.is_dir() else []
        latest = latest_checkpoint(folders[0]) if folders else None
        if latest is not None and step_of(latest) >= 6:
            run_id = folders[0].name
            if history(client, run_id) and history(client, run_id)[-1][0] >= STALL_AFTER:
                return run_id
        time.sleep(0.2)
    pytest.fail(f"no checkpoint at step 6 within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.mark.parametrize("depth", [[], ["--lora-layers", "1"]], ids=["every_block", "prefix_cached"])
def test_a_killed_training_resumes_into_the_same_run_with_the_same_result(mlflow_env, tiny_model_args, tmp_path,
                                                                          monkeypatch, one_thread, migrated_store,
                                                                          depth):
    args = tiny_model_args + OPTIONS + depth
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = tmp_path / "child.log"
    with open(log, "wb") as out:
        child = subprocess.Popen([sys.executable, "-c", CHILD, *args], cwd=tmp_path, env=env, stdout=out,
                                 stderr=subprocess.STDOUT)
    try:
        ref_metrics, ref_history = reference_run(tmp_path, monkeypatch, args, migrated_store)
        checkpoints = tmp_path / "cache" / "checkpoints"
        run_id = wait_until_stalled(child, checkpoints, mlflow_env, log)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    # what a SIGKILL leaves: a RUNNING run, the last two checkpoints, steps logged past the last checkpoint
    assert mlflow_env.get_run(run_id).info.status == "RUNNING"
    assert [step_of(p) for p in list_checkpoints(checkpoints / run_id)] == [3, 6]
    assert [s for s, _ in history(mlflow_env, run_id)] == list(range(1, STALL_AFTER + 1))

    # other options than the interrupted run's are refused, and the run is left as it was
    refused = CliRunner().invoke(train.cli, args + ["--learning-rate", "2e-3", "--resume", run_id])
    assert refused.exit_code == 2, refused.output
    assert "other options or data" in refused.output and "options.learning_rate: 0.001 -> 0.002" in refused.output
    assert mlflow_env.get_run(run_id).info.status == "RUNNING"

    resumed = CliRunner().invoke(train.cli, args + ["--resume", run_id])
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming run {run_id} from step 6" in resumed.output

    run = mlflow_env.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["flipkd.resumed_from_step"] == "6"
    assert len(mlflow_env.search_runs([run.info.experiment_id])) == 1  # the same run, no new one
    steps = history(mlflow_env, run_id)
    assert [s for s, _ in steps] == list(range(1, 13))  # the full history, each step once
    for (step, value), (ref_step, ref_value) in zip(steps, ref_history, strict=True):
        assert step == ref_step and value == pytest.approx(ref_value, abs=1e-4), step
    for key in FINAL:
        assert run.data.metrics[key] == pytest.approx(ref_metrics[key], abs=1e-4), key
    assert run.data.metrics["loss/total"] == pytest.approx(ref_metrics["loss/total"], abs=1e-4)
    assert "student" in {a.path for a in mlflow_env.list_artifacts(run_id)}
    assert not (checkpoints / run_id).exists()  # deleted once the run finished


def test_resume_without_a_checkpoint_is_refused(mlflow_env, tiny_model_args):
    unknown = CliRunner().invoke(train.cli, tiny_model_args + ["--resume", "0" * 32])
    assert unknown.exit_code == 2 and "no such run" in unknown.output, unknown.output
    experiment = mlflow_env.create_experiment("t")
    crashed = mlflow_env.create_run(experiment).info.run_id
    result = CliRunner().invoke(train.cli, tiny_model_args + ["--resume", crashed])
    assert result.exit_code == 2, result.output
    assert "no checkpoint under" in result.output and "Traceback" not in result.output
    assert mlflow_env.get_run(crashed).info.status == "RUNNING"
    mlflow_env.set_terminated(crashed, "FINISHED")
    finished = CliRunner().invoke(train.cli, tiny_model_args + ["--resume", crashed])
    assert finished.exit_code == 2 and "has finished" in finished.output, finished.output


# (seconds left, step, next checkpoint, last step, eval s, after training s, pause?) at a pace of 1 s a step
DEADLINES = [
    (None, 10, 15, 30, 0.0, 0.0, False),  # no deadline: never
    (100.0, 10, 15, 30, 0.0, 0.0, False),  # 5 more steps fit in 100 s
    (4.0, 10, 15, 30, 0.0, 0.0, True),  # they do not fit in 4 s
    (8.0, 10, 15, 30, 5.0, 0.0, True),  # nor with an evaluation (5 s) among them in 8 s
    (8.0, 25, 30, 30, 0.0, 5.0, True),  # the last steps bring the scoring after training along
    (8.0, 20, 25, 30, 0.0, 5.0, False),  # ... only the last ones
    (0.0, 30, 30, 30, 0.0, 5.0, False),  # at the last step there is nothing left to pause
]


@pytest.mark.parametrize("left, step, next_step, last, eval_s, after, expected", DEADLINES)
def test_out_of_time_weighs_the_steps_to_the_next_checkpoint_at_this_sittings_pace(monkeypatch, left, step, next_step,
                                                                                    last, eval_s, after, expected):
    from pipelines import _resume

    now = [1000.0]
    monkeypatch.setattr(_resume.time, "monotonic", lambda: now[0])
    checkpointing = _resume.Checkpointing(Path("unused"), {})
    checkpointing.start(step - 10)
    now[0] += 10.0  # 10 steps in 10 s
    checkpointing.deadline = None if left is None else now[0] + left
    assert checkpointing.out_of_time(step, next_step, last, eval_s, after) is expected
