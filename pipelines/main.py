"""``main``: the whole chain prepare -> teacher -> score -> train -> evaluate, as nested runs of one parent.

Each step is the same command as its own entry point, called in-process; the parent run holds the
children (``mlflow.parentRunId``) and the final metrics.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click
import mlflow

from components.models import STUDENT_DEFAULT, TEACHER_DEFAULT
from pipelines import _mlflow
from pipelines import evaluate as evaluate_step
from pipelines import prepare as prepare_step
from pipelines import score as score_step
from pipelines import teacher as teacher_step
from pipelines import train as train_step
from pipelines._data import DataArgs, data_options, with_data_args
from pipelines._options import common_options, option


def data_argv(args: DataArgs) -> list[str]:
    argv = []
    for flag, value in (("--data", args.data), ("--train", args.train_path), ("--dev", args.dev_path),
                        ("--test", args.test_path), ("--match-threshold", args.match_threshold)):
        if value is not None:
            argv += [flag, str(value)]
    argv += ["--text-a-col", args.text_a_col, "--text-b-col", args.text_b_col, "--label-col", args.label_col,
             "--label-range", ",".join(map(str, args.label_range)), "--dev-fraction", str(args.dev_fraction),
             "--test-fraction", str(args.test_fraction)]
    return argv


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@data_options
@option("--student", default=STUDENT_DEFAULT, help="Student LLM (packaged name, folder or cached hub id).")
@option("--teacher", default=TEACHER_DEFAULT, help="Base teacher SLM, fine-tuned by the teacher step.")
@option("--teacher-epochs", type=click.IntRange(min=1), default=1, help="Teacher fine-tuning epochs.")
@option("--epochs", type=click.FloatRange(min=0, min_open=True), default=3.0, help="Student training epochs.")
@option("--max-steps", type=click.IntRange(min=0), default=0, help="Stop student training after this many steps.")
@option("--train-options", default="", help="More `train` options, quoted: e.g. \"--rank 16 --w-mcl 0.5\".")
@option("--output-dir", type=click.Path(file_okay=False), default="outputs/main", help="Where the steps write.")
@common_options
@with_data_args
@_mlflow.clean_errors
def cli(data_args, **o) -> dict:
    """Run prepare -> teacher -> score -> train -> evaluate as five nested child runs of one parent run."""
    common = ["--seed", str(o["seed"])]  # the steps are nested runs: they land in the parent's experiment
    if o["cache_dir"]:
        common += ["--cache-dir", o["cache_dir"]]
    if not o["progress"]:
        common.append("--no-progress")
    with _mlflow.run("main", o["experiment"]) as parent:
        out = Path(o["output_dir"]) / parent.info.run_id
        _mlflow.log_params({"student": o["student"], "teacher": o["teacher"], "teacher_epochs": o["teacher_epochs"],
                            "epochs": o["epochs"], "max_steps": o["max_steps"], "train_options": o["train_options"],
                            "data": data_args.__dict__})
        prepared = prepare_step.cli.main(data_argv(data_args) + ["--output-dir", str(out / "data")] + common,
                                         standalone_mode=False)
        splits = ["--train", prepared["train"], "--dev", prepared["dev"]]
        if "test" in prepared:
            splits += ["--test", prepared["test"]]
        taught = teacher_step.cli.main(splits + ["--teacher", o["teacher"], "--epochs", str(o["teacher_epochs"]),
                                                 "--output-dir", str(out / "teacher")] + common, standalone_mode=False)
        teacher_dir = taught["teacher_dir"]
        score_step.cli.main(splits + ["--teacher", teacher_dir, "--output-dir", str(out / "scored")] + common,
                            standalone_mode=False)
        trained = train_step.cli.main(splits + ["--teacher", teacher_dir, "--student", o["student"], "--epochs",
                                                str(o["epochs"]), "--max-steps", str(o["max_steps"])]
                                      + shlex.split(o["train_options"]) + common, standalone_mode=False)
        evaluated = evaluate_step.cli.main(splits + ["--model", f"runs:/{trained['run_id']}/student"] + common,
                                           standalone_mode=False)
        final = {k: v for k, v in evaluated.items() if k != "run_id"}
        _mlflow.log_metrics(final, prefix="student/")  # same names as the train and evaluate runs
        mlflow.set_tag("flipkd.train_run_id", trained["run_id"])
        click.echo(f"main finished (parent run {parent.info.run_id}, experiment "
                   f"{_mlflow.experiment_name(parent)!r}): student test F1 "
                   f"{final.get('test_f1', float('nan')):.3f}, teacher (fine-tuned) dev F1 {taught['dev_f1']:.3f}")
        return {"run_id": parent.info.run_id, **final}


if __name__ == "__main__":
    cli()
