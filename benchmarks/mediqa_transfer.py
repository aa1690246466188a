"""Does MEDIQA's dev choose for its test? A reading of the headline benchmark's stored MEDIQA cells.

    python -m benchmarks.mediqa_transfer      # prints the table, writes RESULTS.md and results/mediqa_transfer.json

The headline's MEDIQA dev is the validation file's usable pairs plus whole groups of training-file pairs, up to
600 (the issue asks for a dev of at least 500; the validation file has 295). The validation and test files pair
consumer health questions with NIH FAQ questions; the training file (AMIA 2016) pairs clinical questions. So the
two halves of dev are two different tasks, and only one looks like test. Per stored setting (the seeds of one
settings hash, every variant and teacher), this reports AP on each half of dev and on test, and how well each
dev AP orders the student settings by their test AP (Spearman over settings): the evidence behind any choice of
MEDIQA's dev. Nothing is trained; the splits are rebuilt from ``../shared/data`` exactly as the headline builds them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import click
import numpy as np
from scipy.stats import spearmanr

from benchmarks import _results
from benchmarks._cells import CellStore
from benchmarks._real_size import build_real
from benchmarks.datasets import DEFAULT_DATA_ROOT, MEDIQA_FILES, canonical, read_mediqa_xml
from benchmarks.headline import CELLS_DIR, COUNTS, RESULTS_DIR, setting_label
from components.metrics import average_precision, roc_auc
from components.models import TEACHER_DEFAULT

DATASET = "mediqa2019_rqe"
SUMMARY_FILE = RESULTS_DIR / "mediqa_transfer.json"


def headline_splits(data_root: Path) -> tuple[dict, np.ndarray]:
    """The headline's MEDIQA splits, and which of its dev rows come from the validation file."""
    splits = build_real(DATASET, COUNTS[DATASET], TEACHER_DEFAULT, None, data_root)  # the teacher: banking77's only
    file = Path(data_root) / DATASET / MEDIQA_FILES["dev"]
    validation = canonical(read_mediqa_xml(file), graded=False, source=str(file))
    given = set(zip(validation["text_a"], validation["text_b"], strict=True))
    dev = splits["dev"]
    return splits, np.array([(a, b) in given for a, b in zip(dev["text_a"], dev["text_b"], strict=True)])


def per_setting(store: CellStore, labels: dict[str, np.ndarray], from_validation: np.ndarray) -> list[dict[str, Any]]:
    """One row per stored settings hash of MEDIQA (its seeds averaged): AP on dev, its two halves and test."""
    groups: dict[str, dict[str, dict]] = defaultdict(dict)  # a cell reused under another variant counts once
    for key, cell in store.cells.items():
        dataset, variant, seed, settings_hash = key.split("/")
        if dataset == DATASET and "scores" in cell:
            groups[settings_hash].setdefault(seed, cell | {"variant": variant})
    parts = {"dev": np.ones_like(from_validation), "dev_validation": from_validation,
             "dev_training_file": ~from_validation}
    rows = []
    for settings_hash, by_seed in sorted(groups.items()):
        cells = list(by_seed.values())
        figures: dict[str, list[float]] = defaultdict(list)
        for cell in cells:
            dev, test = np.asarray(cell["scores"]["dev"]), np.asarray(cell["scores"]["test"])
            for name, rows_of in parts.items():
                figures[f"{name}_ap"].append(average_precision(dev[rows_of], labels["dev"][rows_of]))
            figures["test_ap"].append(average_precision(test, labels["test"]))
            figures["test_roc_auc"].append(roc_auc(test, labels["test"]))
        variant = cells[0]["variant"]
        student = not variant.startswith("teacher")
        rows.append({"hash": settings_hash, "student": student, "seeds": len(cells),
                     "setting": setting_label(variant, cells[0].get("brief", "")) if student else variant,
                     **{k: float(np.mean(v)) for k, v in figures.items()}})
    return rows


def agreement(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Spearman, over the student settings, of each dev AP against test AP."""
    students = [r for r in rows if r["student"]]
    test = [r["test_ap"] for r in students]
    if len(students) < 3:
        return {part: float("nan") for part in ("dev", "dev_validation", "dev_training_file")}
    return {part: float(spearmanr([r[f"{part}_ap"] for r in students], test).statistic)
            for part in ("dev", "dev_validation", "dev_training_file")}


def markdown(rows: list[dict[str, Any]], rho: dict[str, float], sizes: dict[str, int]) -> str:
    lines = ["Command: `python -m benchmarks.mediqa_transfer` (reads the headline's stored MEDIQA cells; trains "
             f"nothing). Dev: {sizes['dev_validation']} validation-file pairs + {sizes['dev_training_file']} "
             f"training-file pairs; test: {sizes['test']} pairs. AP per settings hash, seeds averaged.", "",
             "| setting | seeds | dev AP | dev AP, validation part | dev AP, training-file part | test AP | "
             "test ROC-AUC |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["student"], -r["test_ap"])):
        lines.append(f"| {r['setting']} | {r['seeds']} | {r['dev_ap']:.3f} | {r['dev_validation_ap']:.3f} | "
                     f"{r['dev_training_file_ap']:.3f} | {r['test_ap']:.3f} | {r['test_roc_auc']:.3f} |")
    lines += ["", "Spearman over the student settings of dev AP against test AP: whole dev "
              f"{rho['dev']:+.2f}, validation part {rho['dev_validation']:+.2f}, training-file part "
              f"{rho['dev_training_file']:+.2f}."]
    return "\n".join(lines)


@click.command()
@click.option("--data-root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=DEFAULT_DATA_ROOT,
              show_default=True, help="The shared data folder (mediqa2019_rqe/ with its three XML files).")
@click.option("--cells", type=click.Path(exists=True, file_okay=False, path_type=Path), default=CELLS_DIR,
              show_default=True, help="The headline benchmark's stored cells.")
@click.option("--write/--no-write", default=True, show_default=True,
              help="Write RESULTS.md's mediqa_transfer section and results/mediqa_transfer.json.")
def cli(data_root: Path, cells: Path, write: bool) -> None:
    """How well MEDIQA's dev, and each half of it, ranks the stored settings by their test AP."""
    splits, from_validation = headline_splits(data_root)
    labels = {k: f["match"].to_numpy().astype(bool) for k, f in splits.items()}
    rows = per_setting(CellStore(cells, shard=True), labels, from_validation)
    if not rows:
        raise click.ClickException(f"{cells}: no stored {DATASET} cell with scores; run benchmarks.headline first")
    rho = agreement(rows)
    sizes = {"dev_validation": int(from_validation.sum()), "dev_training_file": int((~from_validation).sum()),
             "test": len(labels["test"])}
    text = markdown(rows, rho, sizes)
    click.echo(text)
    if write:
        SUMMARY_FILE.write_text(json.dumps({"sizes": sizes, "spearman": rho, "rows": rows}, indent=2) + "\n",
                                encoding="utf-8")
        _results.write_section("mediqa_transfer", text)


if __name__ == "__main__":
    cli()
