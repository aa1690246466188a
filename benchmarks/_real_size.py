"""What the real-size benchmarks share: their data, and one student training run recorded as a cell.

``benchmarks.stability`` and ``benchmarks.headline`` train the packaged student with
``pipelines.train.train_student`` on thousands of real pairs, one MLflow child run per (dataset, variant, seed),
and keep per cell the dev/test figures, the scores of every evaluated pair, the divergence guard's warnings and
each loss part averaged over every tenth of the run.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from benchmarks._cells import PausedCell
from benchmarks.datasets import DEFAULT_DATA_ROOT, build
from components.data.augment import AugmentConfig
from components.losses.composite_loss import LossConfig
from components.student.lora_encoder import EncoderConfig
from components.training.checkpoint import TrainingPaused
from components.training.trainer import TrainConfig
from pipelines._resume import Checkpointing, last_logged_step

CURVES = ("loss/total", "loss/sup", "loss/dist", "loss/mcl", "grad_norm")


def build_real(dataset: str, counts: dict[str, int | None], teacher: str, cache_dir: str | None,
               data_root: Path = DEFAULT_DATA_ROOT) -> dict:
    """Splits of ``dataset`` at ``counts`` (``max_train``, ``max_dev``, ``max_test``); MEDIQA's dev grows from its
    training file to ``max_dev`` pairs; banking77's hard negatives come from the base ``teacher``."""
    from benchmarks._quality_runs import teacher_scorer

    embed = teacher_scorer(teacher, cache_dir).encode if dataset == "banking77" else None
    return build(dataset, data_root, **counts, seed=0, embed=embed, min_dev=counts.get("max_dev") or 0)


def joint_reading(metrics: dict[str, float]) -> dict[str, float]:
    """A student trained through the decoder path (sup_mode generative) is read jointly, P("yes" | pair): its
    ``joint_*`` figures become the run's, its cosine reading is kept as ``cosine_*``. A student trained both ways
    (sup_mode both) is read through the mix of the two: its ``mix_*`` figures become the run's, the joint ones stay
    ``joint_*``. Other runs: unchanged."""
    if not any(k.startswith("joint_") for k in metrics):
        return metrics
    mixed = any(k.startswith("mix_") for k in metrics)
    kept = {k: v for k, v in metrics.items() if k.startswith("teacher_") or k == "reading_mix_weight"}
    cosine = {f"cosine_{k}": v for k, v in metrics.items()
              if not k.startswith(("joint_", "mix_", "teacher_")) and k not in kept}
    joint = {(k if mixed else k.removeprefix("joint_")): v for k, v in metrics.items() if k.startswith("joint_")}
    mix = {k.removeprefix("mix_"): v for k, v in metrics.items() if k.startswith("mix_")}
    return {**kept, **cosine, **joint, **mix}


def deciles(values: list[float]) -> list[float]:
    """Mean of each tenth of a series (by step order)."""
    chunks = np.array_split(np.asarray(values, dtype=float), 10)
    return [float(c.mean()) if len(c) else float("nan") for c in chunks]


def train_cell(name: str, splits: dict, encoder: EncoderConfig, loss: LossConfig, train: TrainConfig,
               teacher_dir: Path, cache_dir: str | None, experiment: str, tags: dict[str, str],
               no_filter: bool = False, augment: AugmentConfig | None = None, student: str = "smollm2-135m",
               checkpointing: Checkpointing | None = None, paused: PausedCell | None = None) -> dict[str, Any]:
    """One student run as a nested MLflow run ``name``: figures, scores per split, guard, curves, seconds.

    With ``checkpointing`` and ``paused`` the cell can stop at a checkpoint when its deadline nears
    (``TrainingPaused``, recorded in ``paused``) and a later call continues it into the same MLflow run from
    ``checkpointing.resume``; its seconds and guard warnings are then the sum over its sittings."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pipelines import _mlflow
    from pipelines.train import train_student

    started = time.perf_counter()
    client = MlflowClient()
    reopen = None
    if paused is not None and paused.run_id and checkpointing is not None and checkpointing.resume is not None:
        try:
            reopen = client.get_run(paused.run_id).info.run_id
            checkpointing.logged_step = last_logged_step(reopen)
        except MlflowException:  # another tracking store: the run goes on in a new one, its curves from the resume
            reopen = None
    run_id = reopen
    try:
        with _mlflow.run(name, experiment, nested=True, run_id=reopen) as child:
            run_id = child.info.run_id
            mlflow.set_tags(tags)
            if reopen is None:
                _mlflow.log_params({"encoder": encoder.to_dict(), "loss": loss.to_dict(), "train": train.to_dict(),
                                    "filter": {"disabled": no_filter},
                                    "extra_pairs": dataclasses.asdict(augment) if augment else {"per_pair": 0}})
            if checkpointing is not None and checkpointing.resume is not None:
                mlflow.set_tag("flipkd.resumed_from_step", str(checkpointing.resume.step))
            result = train_student(splits, student=student, teacher=str(teacher_dir), cache_dir=cache_dir,
                                   encoder_config=dataclasses.replace(encoder), loss_config=loss, train_config=train,
                                   filter_scope="teacher_terms", no_filter=no_filter, progress=False, log=True,
                                   checkpointing=checkpointing, augment=augment)
    except TrainingPaused as stop:
        if paused is None:
            raise
        since = checkpointing.resume.step if checkpointing.resume is not None else 0
        warned = max((m.value for m in client.get_metric_history(run_id, "guard/warnings") if m.step > since),
                     default=0)
        paused.pause(run_id, stop.step, time.perf_counter() - started, int(warned))
        raise
    run = client.get_run(run_id)
    curves = {}
    for key in CURVES:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        if history:
            curves[key] = deciles([m.value for m in history])
    metrics = joint_reading({k: float(v) for k, v in result.metrics.items() if not k.startswith("teacher_")})
    scores = next(s for s in (result.mix_scores, result.joint_scores, result.scores) if s is not None)
    readings = {}  # a mixed cell keeps both of its readings' scores: the mix is refitted from them, not rerun
    if result.mix_scores is not None:
        readings = {"readings": {name: {k: v.tolist() for k, v in got.items()}
                                 for name, got in (("cosine", result.scores), ("joint", result.joint_scores))}}
    return {"run_id": run_id, "metrics": metrics, "scores": {k: v.tolist() for k, v in scores.items()}, **readings,
            "teacher_dev_ap": result.metrics.get("teacher_dev_average_precision"),
            "guard_warnings": int(run.data.metrics.get("guard_warnings", 0)) + (paused.guard_warnings if paused else 0),
            "guard": run.data.tags.get("flipkd.guard", ""),
            "filter_fraction_dropped": run.data.metrics.get("filter_fraction_dropped"),
            "train_pairs_per_s": run.data.metrics.get("train_pairs_per_s"), "curves": curves,
            "sizes": {split: len(frame) for split, frame in splits.items()}, "steps": int(train.max_steps or 0),
            "seconds": time.perf_counter() - started + (paused.seconds if paused else 0.0),
            **({"paused_at": paused.paused_at} if paused and paused.paused_at else {})}
