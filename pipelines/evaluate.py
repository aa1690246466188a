"""``evaluate``: a trained student (run id, model URI or folder) or a teacher, on any split.

The decision threshold is the one stored with the student (chosen on dev at training time); with
``--choose-threshold`` it is chosen again on this data's dev split.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import mlflow

from components.model_cache import ModelLoadError, cache_root
from components.models import STUDENT_DEFAULT, load_student, looks_like_path, model_fingerprint, resolve_student
from components.student.lora_encoder import ENCODER_FILE, LoraEncoder
from components.student.reading_mix import ReadingMix
from components.teacher.scorer import TeacherScorer
from pipelines import _mlflow
from pipelines._data import data_options, load_splits, log_splits, with_data_args
from pipelines._evaluation import evaluate_scores, log_pr_curves
from pipelines._options import common_options, option
from pipelines.train import ADAPTER_ARTIFACT

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def adapter_folder(model: str) -> Path:
    """A local adapter folder from a folder path, a run id, or a ``runs:/`` / ``models:/`` URI."""
    if Path(model).is_dir():
        folder = Path(model)
    elif RUN_ID.match(model):
        folder = Path(mlflow.artifacts.download_artifacts(run_id=model, artifact_path=ADAPTER_ARTIFACT))
    elif model.startswith(("runs:/", "models:/")):
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model))
    else:
        raise ValueError(f"--model {model!r} is neither a folder, a run id, nor a runs:/ or models:/ URI")
    if not (folder / ENCODER_FILE).is_file():
        raise ValueError(f"{folder} holds no {ENCODER_FILE}: not a flipkd student adapter")
    return folder


def load_trained_encoder(model: str, student: str | None = None, cache_dir: str | None = None) -> LoraEncoder:
    """Rebuild a trained student: its base model (as recorded, unless ``student`` overrides) plus the adapter.

    The adapter records its base model by name and fingerprint, not by path (an adapter moves between
    machines): a packaged or hub name is found again here; a folder of the training machine must be passed as
    ``student``. A base model whose fingerprint differs from the recorded one is loaded with a warning.
    """
    folder = adapter_folder(model)
    meta = json.loads((folder / ENCODER_FILE).read_text(encoding="utf-8"))
    recorded = meta.get("base_model") if isinstance(meta.get("base_model"), dict) else {}  # a path before
    base = student or meta["config"].get("extra", {}).get("student") or STUDENT_DEFAULT
    if not student and looks_like_path(base) and not Path(base).expanduser().exists():
        raise ModelLoadError(f"the adapter's base model {recorded.get('name') or base!r} was the folder {base} on the "
                             f"machine that trained it: pass that model's folder here with --student FOLDER")
    path = resolve_student(base, cache_dir)
    if recorded.get("fingerprint") and model_fingerprint(path) != recorded["fingerprint"]:
        click.echo(f"warning: the base model {path} is not the one the adapter was trained on ("
                   f"{recorded.get('name')!r}, fingerprint {recorded['fingerprint'][:12]}...): its scores will differ",
                   err=True)
    base_model, tokenizer = load_student(path)
    return LoraEncoder.load(folder, base_model, tokenizer)


def stored_reading_mix(encoder: LoraEncoder, model: str) -> tuple[ReadingMix, float]:
    """The reading mix and its threshold that a ``--sup-mode both`` run stored with the adapter."""
    stored = encoder.config.extra.get("reading_mix")
    if not stored:
        raise click.UsageError(f"--mode mix: the student {model} has no stored reading mix; only a student trained "
                               "with --sup-mode both has one (use --mode cosine or --mode joint)")
    return ReadingMix(stored["weight"], stored["scale"], stored["bias"]), float(stored["threshold"])


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@data_options
@option("--model", default=None, help="Trained student: a run id, runs:/RUN/student, models:/NAME@ALIAS or a folder.")
@option("--teacher", default=None, help="Evaluate this teacher instead (packaged name, folder or cached hub id).")
@option("--student", default=None, help="Override the student base model recorded with the adapter.")
@option("--split", "split_names", default="dev,test", help="Comma list of splits to evaluate.")
@option("--mode", type=click.Choice(["cosine", "joint", "mix"]), default="cosine",
        help="Student scoring: cosine of the A-encoder vectors, P(yes | pair) through the decoder path, or the mix "
             "of the two stored with a student trained with --sup-mode both.")
@option("--choose-threshold", is_flag=True, default=False,
        help="Choose the decision threshold again on this data's dev split (default: the stored one).")
@common_options
@with_data_args
@_mlflow.clean_errors
def cli(data_args, **o) -> dict:
    """Evaluate a trained student or a teacher: F1 at the decision threshold, precision, recall, AUC, AP."""
    if bool(o["model"]) == bool(o["teacher"]):
        raise click.UsageError("give exactly one of --model (a trained student) or --teacher")
    names = [s.strip() for s in o["split_names"].split(",") if s.strip()]
    with _mlflow.run("evaluate", o["experiment"]) as active, _mlflow.scratch_dir() as work:
        splits = load_splits(data_args, work, o["seed"])
        missing = [n for n in names if n not in splits]
        if missing:
            raise ValueError(f"--split names {missing} that the data does not have (it has {sorted(splits)})")
        log_splits({n: splits[n] for n in names})
        _mlflow.log_params({"model": o["model"] or "", "teacher": o["teacher"] or "", "splits": names,
                            "data": data_args.__dict__})
        texts = {n: (list(splits[n]["text_a"]), list(splits[n]["text_b"])) for n in names}
        if o["model"]:
            encoder = load_trained_encoder(o["model"], o["student"], o["cache_dir"])
            if o["mode"] == "joint":
                name, stored = "student_joint", encoder.config.joint_threshold
                scores = {n: encoder.joint_scores(*texts[n], show_progress=o["progress"]).numpy() for n in names}
            elif o["mode"] == "mix":
                mix, stored = stored_reading_mix(encoder, o["model"])
                name = "student_mix"
                scores = {n: mix(encoder.score_pairs(*texts[n], show_progress=o["progress"]).numpy(),
                                 encoder.joint_scores(*texts[n], show_progress=o["progress"]).numpy()) for n in names}
            else:
                name, stored = "student", encoder.config.threshold
                scores = {n: encoder.score_pairs(*texts[n], show_progress=o["progress"]).numpy() for n in names}
            threshold = None if o["choose_threshold"] else stored
        else:
            name = "teacher"
            scorer = TeacherScorer(o["teacher"], cache=cache_root(o["cache_dir"]) / "teacher_embeddings",
                                   show_progress=o["progress"])
            scores = {n: scorer.pair_cosine(*texts[n]) for n in names}
            threshold = None
        metrics = evaluate_scores(name, scores, splits, threshold=threshold)
        for n in names:
            log_pr_curves({name: (scores[n], splits[n]["match"].to_numpy())}, n)
        for n in names:
            click.echo(f"{name} {n}: F1 {metrics[f'{n}_f1']:.3f}  precision {metrics[f'{n}_precision']:.3f}  "
                       f"recall {metrics[f'{n}_recall']:.3f}  AP {metrics[f'{n}_average_precision']:.3f}  "
                       f"(threshold {metrics[f'{n}_threshold']:.3f})")
        return {"run_id": active.info.run_id, **metrics}


if __name__ == "__main__":
    cli()
