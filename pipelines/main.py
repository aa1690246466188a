"""``main``: the whole chain prepare -> teacher -> score -> train, as nested runs of one parent.

Each step is the same command as its own entry point, called in-process. ``train`` evaluates the student and
its teacher on dev and test, so the chain has no separate evaluate step (it would encode the same texts again).
The parent run holds the children (``mlflow.parentRunId``), the final metrics of the student and of the base
and fine-tuned teacher, and ``summary.json``; the command ends with the comparison on test.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click
import mlflow

from components.data.contract import read_pairs
from components.models import STUDENT_DEFAULT, TEACHER_DEFAULT
from pipelines import _mlflow
from pipelines import prepare as prepare_step
from pipelines import score as score_step
from pipelines import teacher as teacher_step
from pipelines import train as train_step
from pipelines._data import DataArgs, data_options, with_data_args
from pipelines._evaluation import all_positive, comparison_table
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
@option("--teacher-epochs", type=click.IntRange(min=1), default=4, help="Teacher fine-tuning epochs.")
@option("--epochs", type=click.FloatRange(min=0, min_open=True), default=5.0, help="Student training epochs.")
@option("--max-steps", type=click.IntRange(min=0), default=0, help="Stop student training after this many steps.")
@option("--train-options", default="", help="More `train` options, quoted: e.g. \"--rank 16 --w-mcl 0.5\".")
@option("--output-dir", type=click.Path(file_okay=False), default="outputs/main", help="Where the steps write.")
@common_options
@with_data_args
@_mlflow.clean_errors
def cli(data_args, **o) -> dict:
    """Run prepare -> teacher -> score -> train as four nested child runs of one parent run, and compare."""
    common = ["--seed", str(o["seed"]), "--progress" if o["progress"] else "--no-progress"]
    if o["cache_dir"]:
        common += ["--cache-dir", o["cache_dir"]]
    with _mlflow.run("main", o["experiment"]) as parent:
        out = Path(o["output_dir"]).resolve() / parent.info.run_id
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
                                                str(o["epochs"]), "--max-steps", str(o["max_steps"]),
                                                "--output-dir", str(out / "train")]
                                      + shlex.split(o["train_options"]) + common, standalone_mode=False)
        models = {"student": {k: v for k, v in trained.items() if k != "run_id" and not k.startswith("teacher_")},
                  "teacher_finetuned": {k: v for k, v in taught.items() if k[:4] in ("dev_", "test")},
                  "teacher_base": {k.removeprefix("base_"): v for k, v in taught.items() if k.startswith("base_")}}
        for name, metrics in models.items():  # the same names as in the train and teacher runs
            _mlflow.log_metrics(metrics, prefix=f"{name}/")
        split = "test" if "test" in prepared else "dev"
        baseline = all_positive(read_pairs(prepared[split]))
        summary = {"parent_run_id": parent.info.run_id, "train_run_id": trained["run_id"],
                   "teacher_dir": teacher_dir, "split": split, "all_positive": baseline, **models}
        _mlflow.log_json(summary, "summary.json")
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
        mlflow.set_tag("flipkd.train_run_id", trained["run_id"])
        lines = [f"main finished (parent run {parent.info.run_id}, experiment "
                 f"{_mlflow.experiment_name(parent)!r})",
                 *comparison_table([("student (flipkd)", models["student"]),
                                    ("teacher, fine-tuned", models["teacher_finetuned"]),
                                    ("teacher, base", models["teacher_base"]), ("all-positive baseline", baseline)],
                                   split),
                 f"  student adapter: runs:/{trained['run_id']}/student; fine-tuned teacher: {teacher_dir}",
                 f"  look: mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}",
                 f"  summary: {out / 'summary.json'}"]
        click.echo("\n".join(lines))
        return {"run_id": parent.info.run_id, **models["student"]}


if __name__ == "__main__":
    cli()
