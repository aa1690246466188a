"""``train``: the student with the composite loss of METHOD.md, tracked in MLflow.

With no options it trains the packaged SmolLM2-135M student, taught by the packaged MiniLM teacher, on
the embedded demo FAQ data, evaluates it on dev and test, and prints where to look.

Crash safety: every ``--checkpoint-every`` steps the training state is checkpointed (atomically, see
:mod:`components.training.checkpoint`) under ``<cache folder>/checkpoints/<run id>/``; ``--resume RUN_ID`` (or
``mlflow run --run-id RUN_ID``) continues an interrupted run into the same MLflow run, with the same result
as an uninterrupted one (:mod:`pipelines._resume`). The checkpoints are deleted when the run finishes.
The student's options and the configs they build: :mod:`pipelines._student_options`.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import click
import mlflow
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from components.data.augment import AugmentConfig, teacher_labelled_pairs
from components.losses.composite_loss import FlipKDLoss, LossConfig
from components.metrics import best_f1_threshold
from components.model_cache import cache_root
from components.models import load_student, resolve_student
from components.student.lora_encoder import EncoderConfig, LoraEncoder
from components.student.prefix_cache import disk_store
from components.student.reading_mix import ReadingMix
from components.teacher.finetune import FINETUNE_SIDECAR
from components.teacher.scorer import TeacherScorer
from components.teacher.signal import TeacherSignal
from components.training.checkpoint import (
    CheckpointError,
    TrainingPaused,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from components.training.distributed import DistributedContext
from components.training.divergence_guard import DivergenceGuard, collapse
from components.training.trainer import TrainConfig, Trainer, TrainingPairs
from pipelines import _mlflow
from pipelines._data import data_fingerprint, data_options, load_splits, log_splits, with_data_args
from pipelines._evaluation import all_positive, comparison_table, evaluate_scores, log_pr_curves
from pipelines._options import common_options, option
from pipelines._resume import Checkpointing, checkpoint_folder, fingerprint_config, last_logged_step, resume_target
from pipelines._student_options import (
    DEFAULT_PREFIX_CACHE_GB,
    EVAL_METRICS,
    configs_from_options,
    student_model_option,
    student_options,
)
from pipelines.score import filter_options, score_and_filter, teacher_options

ADAPTER_ARTIFACT = "student"


@dataclass
class StudentRun:
    encoder: LoraEncoder
    signal: TeacherSignal
    metrics: dict[str, float]
    threshold: float
    # student (cosine) scores of every evaluated split, in the split's pair order
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    # the joint reading's, P("yes" | pair), when the decoder path was trained (sup_mode generative or both)
    joint_scores: dict[str, np.ndarray] | None = None
    # the mixed reading's, P(match) from both readings (sup_mode both; components.student.reading_mix)
    mix_scores: dict[str, np.ndarray] | None = None


def build_training_pairs(train: pd.DataFrame, signal: TeacherSignal, keep: np.ndarray) -> TrainingPairs:
    split = signal.splits["train"]
    return TrainingPairs(list(train["text_a"]), list(train["text_b"]), train["label"].to_numpy(np.float64),
                         split.emb_a, split.emb_b, signal.calibrator, keep)


def add_extra_pairs(pairs: TrainingPairs, train: pd.DataFrame, signal: TeacherSignal,
                    config: AugmentConfig) -> tuple[TrainingPairs, dict[str, float]]:
    """Append teacher-labelled pairs built from the training texts (no gold label: ``labelled`` False)."""
    split = signal.splits["train"]
    vectors = {t: v for col, emb in (("text_a", split.emb_a), ("text_b", split.emb_b))
               for t, v in zip(train[col], emb, strict=True)}
    texts = list(vectors)
    index = {t: i for i, t in enumerate(texts)}
    existing = [(index[a], index[b]) for a, b in zip(pairs.text_a, pairs.text_b, strict=True)]
    matrix = np.stack([vectors[t] for t in texts])
    extra = teacher_labelled_pairs(matrix, signal.calibrator, round(config.per_pair * len(pairs)), config, existing)
    n = len(pairs)
    labelled = np.r_[np.ones(n, bool) if pairs.labelled is None else pairs.labelled, np.zeros(len(extra), bool)]
    grown = TrainingPairs(
        pairs.text_a + [texts[i] for i in extra.index_a], pairs.text_b + [texts[i] for i in extra.index_b],
        np.r_[pairs.labels, (extra.scores >= config.positive_threshold).astype(np.float64)],
        np.concatenate([pairs.teacher_a, matrix[extra.index_a]]),
        np.concatenate([pairs.teacher_b, matrix[extra.index_b]]),
        pairs.calibrate, np.r_[pairs.keep, np.ones(len(extra), bool)], labelled)
    return grown, extra.report(config.positive_threshold)


def teacher_kind(teacher: str) -> str:
    return "fine-tuned" if (Path(teacher) / FINETUNE_SIDECAR).is_file() else "base"


def describe_teacher(teacher: str) -> str:
    """Which teacher taught the student: a fine-tuned folder, or a base model not fine-tuned on this data."""
    if teacher_kind(teacher) == "fine-tuned":
        return f"the fine-tuned teacher {Path(teacher).resolve()}"
    return (f"the base teacher {teacher}, not fine-tuned on this data (`main` fine-tunes it first; or pass "
            f"--teacher with the folder a `teacher` run printed)")


def filter_unused(no_filter: bool, filter_scope: str, loss_config: LossConfig) -> str | None:
    """Why the noise filter changes nothing in this run, or None when it does."""
    if no_filter:
        return ("--no-filter, the default: every pair is kept, and every in-batch pair is an L_MCL negative; "
                "--filter applies it")
    if filter_scope == "teacher_terms" and not set(loss_config.parts) & {"dist", "mcl"}:
        return f"--loss-parts {','.join(loss_config.parts)}: it only acts on the teacher-driven losses"
    return None


def loss_config_in_use(loss_config: LossConfig, no_filter: bool) -> LossConfig:
    """The loss's config as L_MCL uses it, and as the run logs it.

    --no-filter turns off both of the filter's rules (METHOD.md, "noise filter"): no labelled pair is dropped, and no
    in-batch pair is masked out of L_MCL's denominator as a probable false negative (delta_neg 1). That is the setting
    chosen on dev (headline benchmark: delta_pos 0, delta_neg 1 keeps every pair and every negative).
    """
    return replace(loss_config, delta_neg=1.0) if no_filter else loss_config


def train_student(splits: dict[str, pd.DataFrame], *, student: str, teacher: str, cache_dir: str | None,
                  encoder_config: EncoderConfig, loss_config: LossConfig, train_config: TrainConfig,
                  filter_scope: str, no_filter: bool, teacher_batch_size: int = 64, teacher_max_length: int = 128,
                  progress: bool = True, log: bool = True, checkpointing: Checkpointing | None = None,
                  augment: AugmentConfig | None = None, distributed: DistributedContext | None = None,
                  prefix_cache_gb: float = DEFAULT_PREFIX_CACHE_GB) -> StudentRun:
    """Teacher signal -> noise filter -> student training -> evaluation; logs to the active MLflow run.

    With ``checkpointing``, the trainer state is saved every ``train_config.checkpoint_every`` steps, and
    ``checkpointing.resume`` (a verified checkpoint) is restored before training continues.

    With ``distributed`` (``world_size > 1``, under torchrun): every rank calls this; the teacher embeddings
    are computed shard by shard (one shard per rank, shared through the embedding cache), training runs in
    DistributedDataParallel on the global batch, and only rank 0 (``log=True`` there only) evaluates and logs;
    the other ranks return right after training, with empty metrics.
    """
    torch.manual_seed(train_config.seed)
    resume = checkpointing.resume if checkpointing else None
    if distributed is not None and distributed.enabled:
        fingerprints = distributed.all_gather_object(data_fingerprint(splits))
        if len(set(map(str, fingerprints))) != 1:
            raise RuntimeError("the ranks loaded different data (check that every rank sees the same files)")
        texts = sorted({t for frame in splits.values() for col in ("text_a", "text_b") for t in frame[col]})
        with torch.random.fork_rng(devices=[]):  # loading a model draws from torch's RNG: keep the LoRA init as is
            TeacherScorer(teacher, batch_size=teacher_batch_size, max_length=teacher_max_length,
                          cache=cache_root(cache_dir) / "teacher_embeddings",
                          show_progress=False).encode(distributed.shard(texts))
        distributed.barrier()  # every shard is in the cache: score_and_filter below only reads it
    scored = score_and_filter(splits, teacher=teacher, cache_dir=cache_dir, delta_pos=loss_config.delta_pos,
                              delta_neg=loss_config.delta_neg, filter_scope=filter_scope,
                              teacher_batch_size=teacher_batch_size, teacher_max_length=teacher_max_length,
                              progress=progress, log=log and resume is None,  # a resumed run has them
                              filter_unused=filter_unused(no_filter, filter_scope, loss_config))
    signal, train = scored.signal, splits["train"]
    keep = np.ones(len(train), dtype=bool) if no_filter else scored.keep
    pairs = build_training_pairs(train, signal, keep)
    if filter_scope == "all" and not no_filter:
        rows = np.flatnonzero(keep)
        pairs = TrainingPairs([pairs.text_a[i] for i in rows], [pairs.text_b[i] for i in rows], pairs.labels[rows],
                              pairs.teacher_a[rows], pairs.teacher_b[rows], pairs.calibrate, np.ones(len(rows), bool))
    if augment is not None and augment.per_pair > 0:
        pairs, extra_report = add_extra_pairs(pairs, train, signal, augment)
        click.echo(f"teacher-labelled extra pairs: {extra_report}")
        if log and resume is None:
            mlflow.log_metrics({f"filter_{k}": v for k, v in extra_report.items()})
            _mlflow.log_json(extra_report, "noise_filter_extra_pairs.json")

    student_path = resolve_student(student, cache_dir)
    model, tokenizer = load_student(student_path)
    encoder_config.extra = {**encoder_config.extra, "student": student, "teacher": str(teacher)}
    encoder = LoraEncoder(model, tokenizer, encoder_config)
    if encoder.prefix is not None:
        fill_prefix_cache(encoder, student_path, splits, pairs, cache_dir, prefix_cache_gb, progress,
                          log and resume is None, distributed)
    loss = FlipKDLoss(loss_config_in_use(loss_config, no_filter))
    logged = checkpointing.logged_step if checkpointing else 0

    guard = DivergenceGuard()
    # the scoring after training, counted in dev evaluations: every split but train, each scored as dev is
    scored_after = sum(len(f) for name, f in splits.items() if name != "train") / max(len(splits.get("dev", ())), 1)

    def on_step(step: int, metrics: dict[str, float]) -> None:
        said = guard.observe(step, metrics)
        for message in said:
            tqdm.write(f"warning: {message}", file=sys.stderr)
        if step > logged:
            mlflow.log_metrics({**metrics, "guard/warnings": float(len(guard.warnings))}, step=step)
            if said:
                mlflow.set_tag("flipkd.guard", "; ".join(m for _, m in guard.warnings[-3:]))

    def on_checkpoint(step: int) -> None:
        folder = save_checkpoint(checkpointing.folder, trainer.state_dict(), checkpointing.config)
        last, evals = trainer.total_steps, train_config.eval_every
        upto = min(step + train_config.checkpoint_every, last)
        evaluating = bool(evals) and (upto // evals > step // evals or upto == last)  # a dev evaluation on the way
        if not trainer.early.stopped and checkpointing.out_of_time(
                step, upto, last, trainer.eval_seconds if evaluating else 0.0, trainer.eval_seconds * scored_after):
            raise TrainingPaused(step, folder)

    trainer = Trainer(encoder, loss, pairs, train_config, on_step=on_step if log else None, show_progress=progress,
                      on_checkpoint=on_checkpoint if checkpointing else None, distributed=distributed,
                      evaluate=dev_score_callback(encoder, splits, loss_config.sup_mode, train_config.eval_metric,
                                                  log, logged, guard, head=loss.sup)
                      if train_config.eval_every else None)
    if resume is not None:
        trainer.load_state_dict(resume.state)
        click.echo(f"resumed at step {trainer.step} of {trainer.total_steps} from {resume.path}")
    if checkpointing:
        checkpointing.start(trainer.step)
    summary = trainer.train()
    if distributed is not None and not distributed.is_main:
        return StudentRun(encoder, signal, {}, 0.5)
    if log:
        mlflow.log_metrics({k: summary[k] for k in ("train_seconds", "train_pairs_per_s", "data_share",
                                                    "best_step", "stopped_at_step", "stopped_early") if k in summary})
        if "best_step" in summary:
            click.echo(f"early stopping: best dev {EVAL_METRICS[train_config.eval_metric][0]} "
                       f"{summary['best_dev_score']:.3f} at step "
                       f"{summary['best_step']:.0f}; stopped at step {summary['stopped_at_step']:.0f}"
                       f"{' (patience ran out)' if summary['stopped_early'] else ''}; the best parameters are kept")
        mlflow.set_tag("flipkd.precision", trainer.precision)

    eval_splits = {name: frame for name, frame in splits.items() if name != "train"}
    student_scores = {name: encoder.score_pairs(list(f["text_a"]), list(f["text_b"]), show_progress=progress).numpy()
                      for name, f in eval_splits.items()}
    teacher_scores = {name: signal.splits[name].cosine for name in eval_splits}
    metrics = evaluate_scores("student", student_scores, splits, log=log)
    metrics.update({f"teacher_{k}": v for k, v in evaluate_scores("teacher", teacher_scores, splits, log=log).items()})
    threshold = metrics.get("dev_threshold", metrics.get("test_threshold", 0.5))
    encoder.config.threshold = float(threshold)
    chosen_on = "dev" if "dev" in student_scores else next(iter(student_scores), None)
    collapsed = collapse(student_scores[chosen_on], threshold) if chosen_on else None
    if collapsed:
        guard.warnings.append((trainer.step, f"after training, {chosen_on} scores collapsed: {collapsed}"))
        tqdm.write(f"warning: {guard.warnings[-1][1]}", file=sys.stderr)
    if log:
        mlflow.log_metric("guard_warnings", float(len(guard.warnings)))
        if guard.warnings:
            mlflow.set_tag("flipkd.guard", "; ".join(f"step {step}: {m}" if not m.startswith("step") else m
                                                     for step, m in guard.warnings[-3:]))
    joint = mixed = None
    if loss_config.sup_mode != "representation":  # the decoder path was trained: report joint scoring too
        joint = {name: encoder.joint_scores(list(f["text_a"]), list(f["text_b"]), show_progress=progress).numpy()
                 for name, f in eval_splits.items()}
        joint_metrics = evaluate_scores("student_joint", joint, splits, log=log)
        metrics.update({f"joint_{k}": v for k, v in joint_metrics.items()})
        encoder.config.joint_threshold = float(joint_metrics.get("dev_threshold", 0.5))
    if loss_config.sup_mode == "both" and chosen_on:  # and the two readings mixed, the weight chosen on dev
        mix = ReadingMix.fit(student_scores[chosen_on], joint[chosen_on], splits[chosen_on]["match"].to_numpy(),
                             EVAL_METRICS[train_config.eval_metric][1], *loss.sup.calibration())
        mixed = {name: mix(student_scores[name], joint[name]) for name in eval_splits}
        mix_metrics = evaluate_scores("student_mix", mixed, splits, log=log)
        metrics.update({f"mix_{k}": v for k, v in mix_metrics.items()}, reading_mix_weight=mix.weight)
        if log:
            mlflow.log_metric("student_mix/weight", mix.weight)
        encoder.config.extra["reading_mix"] = {**mix.to_dict(), "threshold": float(mix_metrics.get("dev_threshold",
                                                                                                   0.5))}
    if log:
        for split in eval_splits:
            log_pr_curves({"student": (student_scores[split], splits[split]["match"].to_numpy()),
                           "teacher": (teacher_scores[split], splits[split]["match"].to_numpy())}, split)
        with _mlflow.scratch_dir() as tmp:
            encoder.save(tmp / ADAPTER_ARTIFACT)
            _mlflow.log_folder(tmp / ADAPTER_ARTIFACT, ADAPTER_ARTIFACT)
    return StudentRun(encoder, signal, metrics, float(threshold), student_scores, joint, mixed)


def fill_prefix_cache(encoder: LoraEncoder, student_path: Path, splits: dict[str, pd.DataFrame],
                      pairs: TrainingPairs, cache_dir: str | None, gigabytes: float, progress: bool, log: bool,
                      distributed: DistributedContext | None) -> None:
    """The frozen prefix's states of every text the run reads, in the shared on-disk cache (``gigabytes`` 0: memory
    only). Under torchrun each rank fills its shard of the texts, like the teacher embedding cache."""
    started = time.perf_counter()
    if gigabytes > 0:
        encoder.use_prefix_store(disk_store(cache_root(cache_dir), student_path, encoder.prefix_start,
                                            int(gigabytes * 1024**3)))
    texts = sorted({*pairs.text_a, *pairs.text_b, *(t for name, frame in splits.items() if name != "train"
                                                     for col in ("text_a", "text_b") for t in frame[col])})
    store = encoder.prefix.store
    if distributed is not None and distributed.enabled and gigabytes > 0:
        encoder.fill_prefix(distributed.shard(texts))
        distributed.barrier()
        store.refresh()
    encoder.fill_prefix(texts, show_progress=progress)
    if log:
        mlflow.log_metrics({"prefix_cache_texts": len(texts), "prefix_cache_computed": encoder.prefix.computed_texts,
                            "prefix_cache_seconds": time.perf_counter() - started,
                            "prefix_cache_memory_mb": store.memory_bytes / 1e6})
        mlflow.set_tag("flipkd.prefix_cache", str(store.folder or "memory only"))


def dev_score_callback(encoder: LoraEncoder, splits: dict[str, pd.DataFrame], sup_mode: str, metric: str, log: bool,
                       logged: int = 0, guard: DivergenceGuard | None = None, head: torch.nn.Module | None = None):
    """Dev ``metric`` (AP, ROC-AUC, or F1 at the threshold best on dev) in the scoring the run is trained for:
    early stopping's measure. Each evaluation also checks the dev scores for a collapse (the guard). Trained both
    ways (sup_mode both), the scoring is the two readings' mix at its best weight on dev; ``head`` is L_sup, whose
    scale and bias read the cosine as log-odds."""
    if "dev" not in splits:
        raise click.UsageError("--eval-every needs a dev split (give --dev, or --data to split)")
    dev = splits["dev"]
    text_a, text_b, labels = list(dev["text_a"]), list(dev["text_b"]), dev["match"].to_numpy()
    measure = EVAL_METRICS[metric][1]
    guard = guard or DivergenceGuard()
    if sup_mode == "both" and head is None:
        raise ValueError("sup_mode 'both' scores dev through L_sup's head: pass head")

    def score(step: int) -> np.ndarray:
        if sup_mode == "generative":
            return encoder.joint_scores(text_a, text_b).numpy()
        cosine = encoder.score_pairs(text_a, text_b).numpy()
        if sup_mode != "both":
            return cosine
        joint = encoder.joint_scores(text_a, text_b).numpy()
        mix = ReadingMix.fit(cosine, joint, labels, measure, *head.calibration())
        if log and step > logged:
            mlflow.log_metric("early_stopping/mix_weight", mix.weight, step=step)
        return mix(cosine, joint)

    def evaluate(step: int) -> float:
        scores = score(step)
        value = float(measure(scores, labels))
        collapsed = collapse(scores, best_f1_threshold(scores, labels))
        if collapsed:
            guard.warnings.append((step, f"step {step}: dev scores collapsed: {collapsed}"))
            tqdm.write(f"warning: {guard.warnings[-1][1]}", file=sys.stderr)
        if log and step > logged:  # a resumed run has logged the steps before its checkpoint
            mlflow.log_metric(f"early_stopping/dev_{metric}", value, step=step)
        return value

    return evaluate


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@data_options
@student_model_option
@teacher_options
@student_options
@filter_options
@option("--filter/--no-filter", "noise_filter", default=False,
        help="The paper's dual-threshold noise filter (--delta-pos, --delta-neg, --filter-scope) and its in-batch "
             "false-negative mask in L_MCL (teacher score above --delta-neg), on or off. Off by default: at real "
             "size the teacher-driven losses on every pair scored higher on dev (docs/defaults.md).")
@option("--extra-pairs-per-pair", type=click.FloatRange(min=0), default=0.0,
        help="Teacher-labelled extra pairs built from the training texts, per labelled pair: they feed L_dist, and "
             "L_MCL when the teacher is confident; never L_sup.")
@option("--extra-neighbour-share", type=click.FloatRange(0, 1), default=0.5,
        help="Share of the extra pairs made from teacher nearest neighbours (the rest are random pairs).")
@option("--extra-positive-threshold", type=click.FloatRange(0, 1), default=0.8,
        help="An extra pair anchors L_MCL only when its teacher score is at least this.")
@option("--checkpoint-every", type=click.IntRange(min=0), default=50,
        help="Checkpoint the training state (adapter, optimiser, scheduler, RNG, data position) every N steps and "
             "at the last one, atomically, under <cache folder>/checkpoints/<run id>/ (cache folder: --cache-dir, "
             "$FLIPKD_CACHE_DIR or ~/.cache/flipkd); the last 2 are kept and deleted when the run finishes. 0: off.")
@option("--resume", metavar="RUN_ID", default=None,
        help="Continue the interrupted (killed, crashed or stopped) train run RUN_ID from its last checkpoint, into "
             "the same MLflow run, with the same options and data as the first time (checked). Under `mlflow run`: "
             "`mlflow run . -e train --run-id RUN_ID ...` resumes the same way.")
@option("--output-dir", type=click.Path(file_okay=False), default="outputs/train",
        help="The run's summary.json goes to OUTPUT_DIR/<run id>/ (the adapter and everything else: MLflow).")
@common_options
@with_data_args
@_mlflow.clean_errors
def cli(data_args, **o) -> dict:
    """Train the flipped student: a LoRA-tuned LLM taught by a small expert encoder.

    \b
    With no options: the embedded demo FAQ data, the packaged SmolLM2-135M student and MiniLM teacher.
    Logs the resolved config, per-step losses, dev/test metrics, plots, the noise-filter report, the teacher
    calibration and the LoRA adapter (PEFT format) to MLflow (default store: sqlite:///mlflow.db).

    \b
    Multi-process: `torchrun --nproc_per_node N -m pipelines.train ...` (DistributedDataParallel; gloo on CPU,
    nccl on GPU). --batch-size is then the global batch; rank 0 alone talks to MLflow.
    """
    distributed = DistributedContext.from_env()
    try:
        if not distributed.is_main:
            return _train_worker(data_args, o, distributed)
        if distributed.enabled and o["resume"]:
            raise CheckpointError("--resume is not supported under torchrun: resume the run in one process "
                                  "(same result), or start a new one")
        return _train_main(data_args, o, distributed)
    finally:
        distributed.close()


def _splits_and_configs(data_args, work: Path, o: dict) -> tuple[dict, tuple]:
    splits = load_splits(data_args, work, o["seed"])
    return splits, configs_from_options(o, splits)


def _train_worker(data_args, o: dict, distributed: DistributedContext) -> dict:
    """A rank other than 0: the same data and training, no MLflow, no artifacts, no checkpoints."""
    with _mlflow.scratch_dir() as work:
        splits, (encoder_config, loss_config, train_config) = _splits_and_configs(data_args, work, o)
        train_student(splits, student=o["student"], teacher=o["teacher"], cache_dir=o["cache_dir"],
                      encoder_config=encoder_config, loss_config=loss_config, train_config=train_config,
                      filter_scope=o["filter_scope"], no_filter=not o["noise_filter"],
                      teacher_batch_size=o["teacher_batch_size"], teacher_max_length=o["teacher_max_length"],
                      progress=False, log=False, distributed=distributed, prefix_cache_gb=o["prefix_cache_gb"],
                      augment=AugmentConfig(o["extra_pairs_per_pair"], o["extra_neighbour_share"],
                                            o["extra_positive_threshold"], o["seed"]))
    return {"rank": distributed.rank}


def _train_main(data_args, o: dict, distributed: DistributedContext) -> dict:
    started = time.perf_counter()
    resume_id = resume_target(o["resume"], o["cache_dir"])
    with _mlflow.scratch_dir() as work:
        # before any run starts: bad data or options leave no run behind
        splits, (encoder_config, loss_config, train_config) = _splits_and_configs(data_args, work, o)
        resume = None
        if resume_id:  # checked before the run is reopened: a refused resume leaves the run as it was
            config = fingerprint_config(o, data_args, splits)
            resume = load_checkpoint(latest_checkpoint(checkpoint_folder(o["cache_dir"], resume_id)), config)
        with _mlflow.run("train", o["experiment"], run_id=resume_id) as active:
            run_id, experiment = active.info.run_id, _mlflow.experiment_name(active)
            if resume is None:
                log_splits(splits)
                _mlflow.log_params({"data": data_args.__dict__, "student": o["student"], "teacher": o["teacher"],
                                    "encoder": encoder_config.to_dict(),
                                    "loss": loss_config_in_use(loss_config, not o["noise_filter"]).to_dict(),
                                    "train": train_config.to_dict(), "filter": {"scope": o["filter_scope"],
                                                                                "disabled": not o["noise_filter"]},
                                    "extra_pairs": {"per_pair": o["extra_pairs_per_pair"],
                                                    "neighbour_share": o["extra_neighbour_share"],
                                                    "positive_threshold": o["extra_positive_threshold"]}})
                config, logged = fingerprint_config(o, data_args, splits), 0
            else:
                logged = last_logged_step(run_id)
                mlflow.set_tag("flipkd.resumed_from_step", str(resume.step))
                click.echo(f"resuming run {run_id} from step {resume.step} (steps up to {logged} already logged)")
            checkpoints = Checkpointing(checkpoint_folder(o["cache_dir"], run_id), config, resume, logged)
            result = train_student(splits, student=o["student"], teacher=o["teacher"], cache_dir=o["cache_dir"],
                                   encoder_config=encoder_config, loss_config=loss_config, train_config=train_config,
                                   filter_scope=o["filter_scope"], no_filter=not o["noise_filter"],
                                   teacher_batch_size=o["teacher_batch_size"],
                                   teacher_max_length=o["teacher_max_length"], progress=o["progress"],
                                   checkpointing=checkpoints, distributed=distributed,
                                   prefix_cache_gb=o["prefix_cache_gb"],
                                   augment=AugmentConfig(o["extra_pairs_per_pair"], o["extra_neighbour_share"],
                                                         o["extra_positive_threshold"], o["seed"]))
        m = result.metrics
    shutil.rmtree(checkpoints.folder, ignore_errors=True)  # the run finished: nothing left to resume
    elapsed = time.perf_counter() - started
    split = "test" if "test_f1" in m else "dev"
    teacher_metrics = {k.removeprefix("teacher_"): v for k, v in m.items() if k.startswith("teacher_")}
    rows = [("student", m), *[(f"student, {name} reading", {k.removeprefix(f"{prefix}_"): v for k, v in m.items()
                                                           if k.startswith(f"{prefix}_")})
                              for prefix, name in (("joint", "joint"), ("mix", "mixed")) if f"{prefix}_dev_f1" in m],
            (f"teacher ({teacher_kind(o['teacher'])})", teacher_metrics),
            ("all-positive baseline", all_positive(splits[split]))]
    out = Path(o["output_dir"]).resolve() / run_id
    out.mkdir(parents=True, exist_ok=True)
    summary = {"run_id": run_id, "experiment": experiment, "teacher": describe_teacher(o["teacher"]), **m}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    lines = [f"flipkd train finished in {elapsed:.0f} s (run {run_id}, experiment {experiment!r})",
             *comparison_table(rows, split),
             f"  taught by: {describe_teacher(o['teacher'])}",
             f"  threshold (chosen on dev): {result.threshold:.3f}; adapter: runs:/{run_id}/{ADAPTER_ARTIFACT}",
             f"  look: mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}",
             f"  summary: {out / 'summary.json'}"]
    click.echo("\n".join(lines))
    return {"run_id": run_id, **m}


if __name__ == "__main__":
    cli()
