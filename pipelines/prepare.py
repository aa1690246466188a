"""``prepare``: read, validate and split the data; write the splits and a data report."""

from __future__ import annotations

from pathlib import Path

import click

from components.data.splitting import check_leakage
from components.data.writing import fingerprint, write_pairs
from pipelines import _mlflow
from pipelines._data import data_options, load_splits, log_splits, with_data_args
from pipelines._options import common_options, option


def data_report(splits) -> dict:
    report = {"leaking_texts": check_leakage(splits), "splits": {}}
    for name, frame in splits.items():
        texts = set(frame["text_a"]) | set(frame["text_b"])
        report["splits"][name] = {
            "pairs": len(frame), "positives": int(frame["match"].sum()), "distinct_texts": len(texts),
            "graded": bool(frame.attrs.get("graded", False)), "fingerprint": fingerprint(frame),
            "source": str(frame.attrs.get("source", "")),
            "mean_chars": float(frame["text_a"].str.len().add(frame["text_b"].str.len()).mean() / 2),
        }
    return report


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@data_options
@option("--output-dir", type=click.Path(file_okay=False), default="outputs/data",
        help="Where train.jsonl, dev.jsonl, test.jsonl and data_report.json are written.")
@common_options
@with_data_args
@_mlflow.clean_errors
def cli(data_args, **o) -> dict:
    """Read, validate and split pair data (no options: the embedded demo FAQ data)."""
    with _mlflow.run("prepare", o["experiment"]) as active, _mlflow.scratch_dir() as work:
        splits = load_splits(data_args, work, o["seed"])
        fp = log_splits(splits)
        _mlflow.log_params({"data": data_args.__dict__, "seed": o["seed"]})
        report = {**data_report(splits), "fingerprint": fp}
        out = Path(o["output_dir"])
        for name, frame in splits.items():
            write_pairs(frame, out / f"{name}.jsonl")
        _mlflow.log_json(report, "data_report.json")
        _mlflow.log_folder(out, "data")
        sizes = ", ".join(f"{n} {r['pairs']}" for n, r in report["splits"].items())
        click.echo(f"prepared {sizes} pairs into {out.resolve()}/ (fingerprint {fp}, run {active.info.run_id}, "
                   f"experiment {_mlflow.experiment_name(active)!r})")
        return {"run_id": active.info.run_id, **{n: str(out / f"{n}.jsonl") for n in splits}}


if __name__ == "__main__":
    cli()
