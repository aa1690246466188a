"""One cell of the quality benchmark: a (dataset, variant, seed) child run in MLflow, and a variant's mean and
standard deviation over its seeds. Teacher variants score with the base or the fine-tuned teacher (fine-tuned once
per dataset and cached), the zero-shot student encodes untrained, trained variants run ``pipelines.train``."""

from __future__ import annotations

import copy
import dataclasses
import gc
import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import mlflow
import numpy as np

from benchmarks._quality_plan import Plan, Variant
from benchmarks._quality_results import _finite
from benchmarks._real_size import joint_reading
from components.data.writing import fingerprint
from components.losses.composite_loss import LossConfig
from components.model_cache import cache_root
from components.models import model_fingerprint, resolve_teacher
from components.student.lora_encoder import EncoderConfig
from components.teacher.finetune import TeacherFinetuneConfig
from components.training.trainer import TrainConfig


def teacher_scorer(path: str | Path, cache_dir: str | None, progress: bool = False):
    from components.teacher.scorer import TeacherScorer

    return TeacherScorer(path, cache=cache_root(cache_dir) / "teacher_embeddings", show_progress=progress)


def _teacher_scorer(path: str | Path, plan: Plan):
    return teacher_scorer(path, plan.cache_dir, plan.progress)


def finetune_cached(dataset: str, splits: dict, teacher: str, config: TeacherFinetuneConfig, cache_dir: str | None,
                    progress: bool = False) -> tuple[Path, dict[str, Any]]:
    """The teacher fine-tuned on this train split: cached by (base teacher, train data, config); reused if there."""
    from components.teacher.finetune import finetune_teacher

    base = resolve_teacher(teacher)
    config = dataclasses.replace(config)
    key = hashlib.sha256(json.dumps([model_fingerprint(base), fingerprint(splits["train"]),
                                     dataclasses.asdict(config)], sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_root(cache_dir) / "benchmark_teachers" / f"{dataset}-{key}"
    info_file = folder.with_name(folder.name + ".json")
    if folder.is_dir() and info_file.is_file():
        info = json.loads(info_file.read_text(encoding="utf-8"))
        click.echo(f"[{dataset}] fine-tuned teacher reused from {folder}")
        return folder, {**info, "reused": True}
    click.echo(f"[{dataset}] fine-tuning the teacher on {len(splits['train'])} train pairs ...")
    started = time.perf_counter()
    finetune_teacher(base, splits["train"], folder, config, show_progress=progress, overwrite=True,
                     log_fn=lambda step, m: mlflow.log_metrics({f"{dataset}/teacher_finetune/{k}": v
                                                                for k, v in m.items()}, step=step))
    info = {"finetune_seconds": time.perf_counter() - started, "train_pairs": len(splits["train"]),
            "config": dataclasses.asdict(config), "base": str(teacher), "folder": str(folder)}
    info_file.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return folder, {**info, "reused": False}


def finetuned_teacher(dataset: str, splits: dict, plan: Plan) -> tuple[Path, dict[str, Any]]:
    return finetune_cached(dataset, splits, plan.teacher, plan.teacher_finetune, plan.cache_dir, plan.progress)


def run_teacher(splits: dict, teacher: str | Path, model_name: str, plan: Plan) -> dict[str, float]:
    from pipelines._evaluation import evaluate_scores

    scorer = _teacher_scorer(teacher, plan)
    scores = {n: scorer.pair_cosine(list(f["text_a"]), list(f["text_b"])) for n, f in splits.items() if n != "train"}
    return evaluate_scores(model_name, scores, splits, log=True)


def run_zeroshot(splits: dict, seed: int, plan: Plan) -> dict[str, float]:
    import torch

    from components.models import load_student, resolve_student
    from components.student.lora_encoder import LoraEncoder
    from pipelines._evaluation import evaluate_scores

    torch.manual_seed(seed)
    model, tokenizer = load_student(resolve_student(plan.student, plan.cache_dir))
    encoder = LoraEncoder(model, tokenizer, copy.deepcopy(plan.encoder))
    scores = {n: encoder.score_pairs(list(f["text_a"]), list(f["text_b"])).numpy()
              for n, f in splits.items() if n != "train"}
    return evaluate_scores("student", scores, splits, log=True)


def run_trained(splits: dict, variant: Variant, seed: int, teacher_dir: Path, plan: Plan) -> dict[str, float]:
    from components.data.augment import AugmentConfig
    from pipelines.train import train_student

    loss = dataclasses.replace(plan.loss, parts=variant.parts, margin_rule=variant.margin_rule,
                               sup_mode=variant.sup_mode)
    train = dataclasses.replace(plan.train, seed=seed)
    encoder = copy.deepcopy(plan.encoder)
    augment = AugmentConfig(per_pair=variant.extra_per_pair, seed=seed) if variant.extra_per_pair else None
    _log_config(encoder, loss, train, variant)
    result = train_student(splits, student=plan.student, teacher=str(teacher_dir), cache_dir=plan.cache_dir,
                           encoder_config=encoder, loss_config=loss, train_config=train,
                           filter_scope="teacher_terms", no_filter=variant.no_filter, progress=False, log=True,
                           augment=augment)
    logged = mlflow.get_run(mlflow.active_run().info.run_id).data.metrics
    metrics = dict(result.metrics)
    if variant.joint:  # the joint scores are the variant's result; its cosine reading is kept as cosine_*
        metrics = joint_reading(metrics)
    for key in ("train_seconds", "train_pairs_per_s", "filter_fraction_dropped"):
        if key in logged:
            metrics[key] = logged[key]
    flagged = metrics.get("filter_fraction_dropped", float("nan"))
    metrics["filter_fraction_flagged"] = flagged
    metrics["filter_fraction_dropped"] = 0.0 if variant.no_filter else flagged
    del result
    return metrics


def _log_config(encoder: EncoderConfig, loss: LossConfig, train: TrainConfig, variant: Variant) -> None:
    from pipelines import _mlflow

    _mlflow.log_params({"encoder": encoder.to_dict(), "loss": loss.to_dict(), "train": train.to_dict(),
                        "filter": {"scope": "teacher_terms", "disabled": variant.no_filter},
                        "extra_pairs_per_pair": variant.extra_per_pair})


def run_cell(dataset: str, splits: dict, variant: Variant, seed: int, plan: Plan,
             teacher_dir: Path | None, teacher_info: dict | None) -> dict[str, Any]:
    """One child run; returns the per-seed record."""
    from pipelines import _mlflow

    started = time.perf_counter()
    with _mlflow.run(f"{dataset}/{variant.name}/seed{seed}", plan.experiment, nested=True) as child:
        mlflow.set_tags({"flipkd.benchmark": "quality", "benchmark.dataset": dataset,
                         "benchmark.variant": variant.name, "benchmark.seed": str(seed),
                         "benchmark.description": variant.description})
        mlflow.log_params({"dataset": dataset, "variant": variant.name, "seed": seed, "student": plan.student,
                           "base_teacher": plan.teacher, "teacher": str(teacher_dir or plan.teacher)})
        for split, frame in splits.items():
            mlflow.log_metric(f"data_{split}_pairs", len(frame))
        record: dict[str, Any] = {"seed": seed}
        if variant.name == "teacher_base":
            metrics = run_teacher(splits, plan.teacher, "teacher_base", plan)
        elif variant.name == "teacher_finetuned":
            metrics = run_teacher(splits, teacher_dir, "teacher_finetuned", plan)
            metrics["train_seconds"] = float(teacher_info["finetune_seconds"])
            metrics["train_pairs_per_s"] = (teacher_info["train_pairs"] * plan.teacher_finetune.epochs
                                            / max(teacher_info["finetune_seconds"], 1e-9))
            record["teacher_reused"] = bool(teacher_info.get("reused"))
        elif variant.kind == "zeroshot":
            metrics = run_zeroshot(splits, seed, plan)
            metrics["train_seconds"] = 0.0
        else:
            metrics = run_trained(splits, variant, seed, teacher_dir, plan)
        record.update({
            "f1": _finite(metrics["test_f1"]), "average_precision": _finite(metrics["test_average_precision"]),
            "dev_f1": _finite(metrics["dev_f1"]), "dev_ap": _finite(metrics.get("dev_average_precision")),
            "threshold": _finite(metrics.get("dev_threshold")),
            "precision": _finite(metrics.get("test_precision")), "recall": _finite(metrics.get("test_recall")),
            "roc_auc": _finite(metrics.get("test_roc_auc")),
        })
        if "test_spearman" in metrics:  # graded data; None when the scores are constant
            record["spearman"] = _finite(metrics["test_spearman"])
        for key in ("train_seconds", "train_pairs_per_s", "filter_fraction_dropped", "filter_fraction_flagged",
                    "teacher_test_f1", "cosine_test_f1", "cosine_dev_f1"):
            if _finite(metrics.get(key)) is not None:
                record[key] = float(metrics[key])
        record["run_seconds"] = time.perf_counter() - started
        record["run_id"] = child.info.run_id
        _mlflow.log_metrics({k: v for k, v in record.items() if isinstance(v, float)}, prefix="benchmark/")
    gc.collect()
    return record


def summarise(records: list[dict[str, Any]], variant: Variant, plan: Plan, parent_run_id: str) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1; 0 for one seed) over the seeds of one cell."""
    def stats(key: str) -> tuple[float, float] | None:
        values = np.array([r[key] for r in records if r.get(key) is not None and r[key] == r[key]], dtype=float)
        if not len(values):
            return None
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0

    entry: dict[str, Any] = {"kind": variant.kind, "description": variant.description}
    for key, name in (("f1", "f1"), ("average_precision", "ap"), ("spearman", "spearman"), ("dev_f1", "dev_f1"),
                      ("dev_ap", "dev_ap"),
                      ("train_seconds", "train_seconds"), ("train_pairs_per_s", "train_pairs_per_s"),
                      ("filter_fraction_dropped", "filter_fraction_dropped"),
                      ("filter_fraction_flagged", "filter_fraction_flagged"),
                      ("cosine_test_f1", "cosine_f1")):
        found = stats(key)
        if found is not None:
            entry[f"{name}_mean"], entry[f"{name}_std"] = found
        elif key in ("f1", "average_precision") or any(key in r for r in records):
            entry[f"{name}_mean"], entry[f"{name}_std"] = None, None  # e.g. Spearman of constant scores
    entry["seeds"] = [r["seed"] for r in records]
    entry["per_seed"] = records
    entry["parent_run_id"] = parent_run_id
    entry["settings_hash"] = plan.settings_hash()
    entry["settings_brief"] = plan.brief()
    entry["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return entry
