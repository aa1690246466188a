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
