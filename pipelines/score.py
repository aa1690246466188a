"""``score``: teacher scores for every pair (cached), Platt calibration, and the noise-filter report.

Writes the scored splits (``teacher_cosine`` and ``teacher_score`` next to the gold ``label``, plus the
filter's ``keep``) so a student run can be reproduced without running the teacher, and logs the
calibration and the report (with examples of each dropped kind) as JSON artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click
import mlflow
import numpy as np
import pandas as pd

from components.data.writing import write_pairs
from components.model_cache import cache_root
from components.models import TEACHER_DEFAULT
from components.teacher.noise_filter import DualThresholdFilter, FilterReport
from components.teacher.scorer import TeacherScorer
from components.teacher.signal import TeacherSignal, compute_teacher_signal
from pipelines import _mlflow, _plots
from pipelines._data import data_options, load_splits, log_splits, with_data_args
from pipelines._options import UNIT, common_options, option


@dataclass
class ScoredData:
    signal: TeacherSignal
    keep: np.ndarray
    report: FilterReport
    cache_hits: int
    cache_misses: int


def teacher_options(func):
    for opt in reversed([
        option("--teacher", default=TEACHER_DEFAULT,
               help="Teacher SLM: 'all-minilm-l6-v2' (packaged), a folder (e.g. the `teacher` step's output) "
                    "or a cached hub id."),
        option("--teacher-batch-size", type=click.IntRange(min=1), default=64,
               help="Rows of every teacher forward (short batches are filled up, so a text gets the same vector "
                    "in any company; part of the embedding cache key)."),
        option("--teacher-max-length", type=click.IntRange(min=2), default=128, help="Teacher tokens per text."),
    ]):
        func = opt(func)
    return func


def filter_options(func):
    for opt in reversed([
        option("--delta-pos", type=UNIT, default=0.5,
               help="Drop a labelled positive whose teacher score is below this."),
        option("--delta-neg", type=UNIT, default=0.5,
               help="Drop a labelled negative whose teacher score is above this; in-batch pairs above it are not "
                    "used as negatives."),
        option("--filter-scope", type=click.Choice(["teacher_terms", "all"]), default="teacher_terms",
               help="Drop noisy pairs from the teacher-driven losses only, or from training altogether."),
    ]):
        func = opt(func)
    return func


def score_and_filter(splits: dict[str, pd.DataFrame], *, teacher: str, cache_dir: str | None, delta_pos: float,
                     delta_neg: float, filter_scope: str, teacher_batch_size: int = 64,
                     teacher_max_length: int = 128, progress: bool = True, log: bool = True,
                     filter_unused: str | None = None) -> ScoredData:
    """Teacher signal for every split and the filter verdict on train; logs report and calibration.

    ``filter_unused`` (why the run does not use the filter, e.g. ``--no-filter``): then its drop share is
    neither printed nor logged, so runs compared in MLflow do not show a filter that did nothing.
    """
    scorer = TeacherScorer(teacher, batch_size=teacher_batch_size, max_length=teacher_max_length,
                           cache=cache_root(cache_dir) / "teacher_embeddings", show_progress=progress)
    signal = compute_teacher_signal(scorer, splits)
    train = splits["train"]
    keep, report = DualThresholdFilter(delta_pos, delta_neg, filter_scope)(
        signal.scores("train"), train["match"].to_numpy(), ids=list(train["pair_id"]))
    click.echo(f"noise filter: {report.summary() if filter_unused is None else f'not applied ({filter_unused})'}")
    click.echo(f"teacher: {scorer.cache_hits} cached embeddings reused, {scorer.cache_misses} texts encoded")
    if log:
        mlflow.log_metrics({"teacher_cache_hits": scorer.cache_hits, "teacher_cache_misses": scorer.cache_misses})
        _mlflow.log_json(signal.calibrator.to_dict(), "teacher_calibration.json")
    if log and filter_unused is None:
        by_id = train.set_index("pair_id")
        examples = {rule: by_id.loc[ids, ["text_a", "text_b", "label"]].reset_index().to_dict("records")
                    for rule, ids in report.examples.items()}
        _mlflow.log_json({**report.to_dict(), "examples": examples}, "noise_filter_report.json")
        _mlflow.log_json({"dropped_pair_ids": list(train["pair_id"][~keep])}, "noise_filter_dropped_ids.json")
        mlflow.log_metrics({"filter_dropped": report.dropped, "filter_fraction_dropped": report.fraction_dropped,
                            "filter_dropped_positive": report.dropped_positive_below_delta_pos,
                            "filter_dropped_negative": report.dropped_negative_above_delta_neg})
    if log:
        for split in splits:
            fig = _plots.similarity_histogram(signal.scores(split), splits[split]["match"].to_numpy(),
                                              f"teacher score (calibrated), {split}")
            mlflow.log_figure(fig, f"plots/teacher_calibrated_{split}.png")
            _plots.close(fig)
    return ScoredData(signal, keep, report, scorer.cache_hits, scorer.cache_misses)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@data_options
@teacher_options
@filter_options
@common_options
@option("--output-dir", type=click.Path(file_okay=False), default="outputs/scored",
        help="Where the scored splits are written (also logged as artifacts).")
@with_data_args
@_mlflow.clean_errors
def cli(data_args, **o) -> dict:
    """Score every pair with the teacher (cached), calibrate, and report what the noise filter drops."""
    with _mlflow.run("score", o["experiment"]) as active, _mlflow.scratch_dir() as work:
        splits = load_splits(data_args, work, o["seed"])
        log_splits(splits)
        _mlflow.log_params({"data": data_args.__dict__, "teacher": o["teacher"],
                            "filter": {"delta_pos": o["delta_pos"], "delta_neg": o["delta_neg"],
                                       "scope": o["filter_scope"]}})
        scored = score_and_filter(splits, teacher=o["teacher"], cache_dir=o["cache_dir"], delta_pos=o["delta_pos"],
                                  delta_neg=o["delta_neg"], filter_scope=o["filter_scope"],
                                  teacher_batch_size=o["teacher_batch_size"],
                                  teacher_max_length=o["teacher_max_length"], progress=o["progress"])
        out = Path(o["output_dir"])
        for name, frame in splits.items():
            frame = frame.copy()
            frame["teacher_cosine"] = scored.signal.splits[name].cosine
            frame["teacher_score"] = scored.signal.scores(name)
            if name == "train":
                frame["keep"] = scored.keep
            write_pairs(frame, out / f"{name}.jsonl")
        _mlflow.log_folder(out, "scored")
        click.echo(f"scored splits in {out}/ (run {active.info.run_id})")
        return {"run_id": active.info.run_id, "output_dir": str(out)}


if __name__ == "__main__":
    cli()
