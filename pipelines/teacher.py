"""``teacher``: fine-tune the teacher SLM on the training split, the domain expert of the paper.

The fine-tuned teacher is a normal model folder (``--output-dir``) that ``score`` and ``train`` take as
``--teacher``; it is also logged as the run's ``teacher`` artifact. The teacher is evaluated before and
after fine-tuning on dev/test (cosine, threshold chosen on dev).
"""

from __future__ import annotations

from pathlib import Path

import click

from components.model_cache import cache_root
from components.models import TEACHER_DEFAULT
from components.teacher.finetune import TeacherFinetuneConfig, finetune_teacher
from components.teacher.scorer import TeacherScorer
from pipelines import _mlflow
from pipelines._data import data_options, load_splits, log_splits, with_data_args
from pipelines._evaluation import evaluate_scores
from pipelines._options import POSITIVE, common_options, option


def evaluate_teacher(path: str, name: str, splits, cache_dir, progress: bool) -> dict[str, float]:
    scorer = TeacherScorer(path, cache=cache_root(cache_dir) / "teacher_embeddings", show_progress=progress)
    scores = {n: scorer.pair_cosine(list(f["text_a"]), list(f["text_b"])) for n, f in splits.items() if n != "train"}
    return evaluate_scores(name, scores, splits)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@data_options
@option("--teacher", default=TEACHER_DEFAULT, help="Base teacher: packaged name, folder or cached hub id.")
@option("--output-dir", type=click.Path(file_okay=False), default="outputs/teacher",
        help="Folder for the fine-tuned teacher (replaced atomically).")
@option("--epochs", type=click.IntRange(min=1), default=4,
        help="Passes over the training pairs (4: best dev AP of 1, 2 and 4 at 2,000 real pairs; README, Defaults).")
@option("--learning-rate", type=POSITIVE, default=2e-5, help="AdamW learning rate.")
@option("--batch-size", type=click.IntRange(min=2), default=32, help="Pairs per step (CoSENT compares pairs).")
@option("--max-length", type=click.IntRange(min=2), default=128, help="Tokens per text.")
@option("--scale", type=POSITIVE, default=20.0, help="CoSENT scale.")
@option("--log-model/--no-log-model", default=True, help="Log the fine-tuned teacher folder as an artifact.")
@common_options
@with_data_args
@_mlflow.clean_errors
def cli(data_args, **o) -> dict:
    """Fine-tune the teacher (CoSENT) on the training split and compare it with the base teacher."""
    config = TeacherFinetuneConfig(epochs=o["epochs"], learning_rate=o["learning_rate"], batch_size=o["batch_size"],
                                   max_length=o["max_length"], seed=o["seed"], scale=o["scale"])
    with _mlflow.run("teacher", o["experiment"]) as active, _mlflow.scratch_dir() as work:
        splits = load_splits(data_args, work, o["seed"])
        log_splits(splits)
        _mlflow.log_params({"teacher": o["teacher"], "finetune": config.__dict__, "data": data_args.__dict__})
        base = evaluate_teacher(o["teacher"], "teacher_base", splits, o["cache_dir"], o["progress"])
        out = finetune_teacher(o["teacher"], splits["train"], o["output_dir"], config, show_progress=o["progress"],
                               log_fn=lambda step, m: _mlflow.log_metrics(m, step=step, prefix="teacher_finetune/"),
                               overwrite=True)
        tuned = evaluate_teacher(str(out), "teacher_finetuned", splits, o["cache_dir"], o["progress"])
        if o["log_model"]:
            _mlflow.log_folder(out, "teacher")
        click.echo(f"teacher dev F1: base {base['dev_f1']:.3f} -> fine-tuned {tuned['dev_f1']:.3f}; "
                   f"saved in {Path(out).resolve()} (run {active.info.run_id})")
        return {"run_id": active.info.run_id, "teacher_dir": str(Path(out).resolve()), **tuned,
                **{f"base_{k}": v for k, v in base.items()}}


if __name__ == "__main__":
    cli()
