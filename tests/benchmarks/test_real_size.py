from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks._real_size import joint_reading, train_cell
from components.losses.composite_loss import LossConfig
from components.student.lora_encoder import EncoderConfig
from components.training.trainer import TrainConfig
from pipelines import _mlflow, train
from pipelines.train import StudentRun

COSINE = {"dev": np.array([0.1, 0.2]), "test": np.array([0.3])}
JOINT = {"dev": np.array([0.7, 0.6]), "test": np.array([0.9])}


@pytest.mark.parametrize("joint", [False, True], ids=["cosine", "decoder-path"])
def test_a_decoder_path_cell_is_its_joint_reading(mlflow_env, monkeypatch, joint):
    metrics = {"test_average_precision": 0.4, "teacher_test_average_precision": 0.5}
    if joint:
        metrics["joint_test_average_precision"] = 0.8
    run = StudentRun(None, None, metrics, 0.1, COSINE, JOINT if joint else None)
    monkeypatch.setattr(train, "train_student", lambda *args, **kwargs: run)
    splits = {name: pd.DataFrame({"match": [True] * n}) for name, n in (("train", 4), ("dev", 2), ("test", 1))}
    with _mlflow.run("headline", "t"):  # as the headline runs it: a child of its parent run
        cell = train_cell("cell", splits, EncoderConfig(),
                          LossConfig(sup_mode="generative" if joint else "representation"), TrainConfig(),
                          Path("teacher"), None, "t", {})
    assert cell["scores"] == {k: v.tolist() for k, v in (JOINT if joint else COSINE).items()}
    assert cell["metrics"]["test_average_precision"] == (0.8 if joint else 0.4)
    assert ("cosine_test_average_precision" in cell["metrics"]) == joint
    assert not any(k.startswith(("teacher_", "joint_")) for k in cell["metrics"])


def test_a_both_ways_cell_is_its_mixed_reading_and_keeps_both_readings(mlflow_env, monkeypatch):
    mixed = {"dev": np.array([0.5, 0.4]), "test": np.array([0.6])}
    metrics = {"test_average_precision": 0.4, "joint_test_average_precision": 0.8, "mix_test_average_precision": 0.9,
               "reading_mix_weight": 0.7}
    monkeypatch.setattr(train, "train_student",
                        lambda *args, **kwargs: StudentRun(None, None, metrics, 0.1, COSINE, JOINT, mixed))
    splits = {name: pd.DataFrame({"match": [True] * n}) for name, n in (("train", 4), ("dev", 2), ("test", 1))}
    with _mlflow.run("headline", "t"):
        cell = train_cell("cell", splits, EncoderConfig(), LossConfig(sup_mode="both"), TrainConfig(),
                          Path("teacher"), None, "t", {})
    assert cell["scores"] == {k: v.tolist() for k, v in mixed.items()}
    assert cell["readings"] == {"cosine": {k: v.tolist() for k, v in COSINE.items()},
                                "joint": {k: v.tolist() for k, v in JOINT.items()}}
    assert cell["metrics"] == {"test_average_precision": 0.9, "joint_test_average_precision": 0.8,
                               "cosine_test_average_precision": 0.4, "reading_mix_weight": 0.7}


def test_joint_reading_keeps_the_teacher_and_the_cosine_figures():
    metrics = {"dev_f1": 0.5, "teacher_dev_f1": 0.6, "joint_dev_f1": 0.7}
    assert joint_reading(metrics) == {"dev_f1": 0.7, "cosine_dev_f1": 0.5, "teacher_dev_f1": 0.6}
    assert joint_reading({"dev_f1": 0.5}) == {"dev_f1": 0.5}


def _tiny_cell(folder, splits, tiny_llama_dir, tiny_bert_dir, deadline=None):
    """The headline's way of running a cell, on the tiny models: checkpoints every 2 steps, pausable."""
    from benchmarks._cells import PausedCell
    from components.training.checkpoint import latest_checkpoint, load_checkpoint
    from pipelines._resume import Checkpointing

    checkpointing = Checkpointing(folder, {"cell": "tiny"}, deadline=deadline)
    if latest_checkpoint(folder) is not None:
        checkpointing.resume = load_checkpoint(latest_checkpoint(folder), checkpointing.config)
    train_config = TrainConfig(max_steps=6, batch_size=8, checkpoint_every=2, eval_every=3, learning_rate=1e-3)
    return train_cell("cell", splits, EncoderConfig(rank=4, alpha=8, max_length=16), LossConfig(), train_config,
                      Path(tiny_bert_dir), None, "t", {}, student=str(tiny_llama_dir), checkpointing=checkpointing,
                      paused=PausedCell(folder))


def test_a_cell_out_of_time_pauses_at_a_checkpoint_and_continues_into_the_same_run(mlflow_env, tmp_path,
                                                                                     tiny_llama_dir, tiny_bert_dir):
    import time

    from benchmarks._cells import PausedCell
    from components.data.demo import demo_pairs
    from components.data.splitting import split_grouped
    from components.training.checkpoint import TrainingPaused, latest_checkpoint, step_of

    splits = {name: frame.head(24) for name, frame in split_grouped(demo_pairs(), seed=0).items()}
    with _mlflow.run("headline", "t"):
        whole = _tiny_cell(tmp_path / "whole", splits, tiny_llama_dir, tiny_bert_dir)
    folder = tmp_path / "paused"
    with _mlflow.run("headline", "t"), pytest.raises(TrainingPaused) as stop:
        _tiny_cell(folder, splits, tiny_llama_dir, tiny_bert_dir, deadline=time.monotonic())  # no time left
    paused = PausedCell(folder)
    assert stop.value.step == 2 and step_of(latest_checkpoint(folder)) == 2 and paused.paused_at == [2]
    assert mlflow_env.get_run(paused.run_id).info.status == "KILLED"
    with _mlflow.run("headline", "t"):
        cell = _tiny_cell(folder, splits, tiny_llama_dir, tiny_bert_dir)
    assert cell["run_id"] == paused.run_id and mlflow_env.get_run(cell["run_id"]).info.status == "FINISHED"
    assert cell["paused_at"] == [2] and cell["seconds"] > paused.seconds > 0
    assert "paused_at" not in whole
    for split in ("dev", "test"):
        np.testing.assert_allclose(cell["scores"][split], whole["scores"][split], atol=1e-5)
    steps = [m.step for m in mlflow_env.get_metric_history(cell["run_id"], "loss/total")]
    assert sorted(steps) == list(range(1, 7))  # every step logged once, across the two sittings
    assert cell["metrics"]["dev_average_precision"] == pytest.approx(whole["metrics"]["dev_average_precision"])
