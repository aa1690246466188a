"""Does another dev threshold rule transfer better than F1's maximum? Read on dev alone, from the headline cells.

    python -m benchmarks.threshold_rules --set epochs=5 --set eval_every=125 --set readout_rank=128 \\
        --set lora_layers=16 --best delta_pos=0 --best delta_neg=1

The headline benchmark puts each scorer's threshold at the F1 maximum of its dev scores (seed-averaged for the
students). On a dev set with few positives (STS-B: 106 of 600) that maximum is noisy, so a rule that smooths it
might carry better to test. Test is not read here: dev is split in random halves, each rule picks a threshold on
one half and is scored by F1 on the other (both ways, ``--splits`` times), for every scorer of the headline table
(the chosen fine-tuned teacher and each student variant). ``smoothed`` takes the maximum of F1 averaged over
bootstrap resamples of the half (:func:`smoothed_f1_threshold`). The same ``--best`` / ``--set`` as the headline
command select the same cells; nothing is trained. Writes RESULTS.md's threshold_rules section and
results/threshold_rules.json (mean and std of each rule's F1 per dataset and scorer).
"""

from __future__ import annotations

import json

import click
import numpy as np

from benchmarks import _results
from benchmarks._cells import CellStore
from benchmarks.headline import (
    CELLS_DIR,
    COUNTS,
    RESULTS_DIR,
    SEEDS,
    SOURCE,
    STUDENTS,
    Settings,
    chosen_teacher,
    make_settings,
    plan,
    stored_cells,
)
from components.metrics import best_f1_threshold, classification_metrics

CANDIDATES = 400
SUMMARY_FILE = RESULTS_DIR / "threshold_rules.json"


def smoothed_f1_threshold(scores: np.ndarray, labels: np.ndarray, resamples: int = 200, seed: int = 0) -> float:
    """The threshold that maximises F1 averaged over ``resamples`` bootstrap resamples of these pairs.

    A plain F1 maximum can sit on a narrow spike made by a few pairs; averaging the F1 curve over resamples
    favours a threshold that is good on most of them. Candidates are midpoints between neighbouring distinct
    scores (at most ``CANDIDATES`` of them, at evenly spaced ranks), as :func:`best_f1_threshold` places its own.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels) >= 0.5
    distinct = np.unique(scores)
    if len(distinct) < 2 or not labels.any():
        return best_f1_threshold(scores, labels)
    mids = (distinct[1:] + distinct[:-1]) / 2
    candidates = mids[np.unique(np.linspace(0, len(mids) - 1, min(CANDIDATES, len(mids))).round().astype(int))]
    index = np.random.default_rng(seed).integers(0, len(scores), size=(resamples, len(scores)))
    s, y = scores[index], labels[index]
    decisions = s[:, :, None] >= candidates[None, None, :]  # resample x pair x candidate
    tp = (decisions & y[:, :, None]).sum(1)
    predicted, positives = decisions.sum(1), y.sum(1)[:, None]
    f1 = 2 * tp / np.maximum(predicted + positives, 1)
    return float(candidates[int(np.argmax(f1.mean(0)))])


RULES = {"f1_max": best_f1_threshold, "smoothed": smoothed_f1_threshold}


def half_to_half(scores: np.ndarray, labels: np.ndarray, splits: int, seed: int = 0) -> dict[str, list[float]]:
    """F1 on one random half of dev at each rule's threshold from the other half, both ways, ``splits`` times."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {name: [] for name in RULES}
    for _ in range(splits):
        order = rng.permutation(len(labels))
        first, second = order[: len(labels) // 2], order[len(labels) // 2:]
        for fit, read in ((first, second), (second, first)):
            for name, rule in RULES.items():
                threshold = rule(scores[fit], labels[fit])
                out[name].append(classification_metrics(scores[read], labels[read], threshold)["f1"])
    return out


def dev_scores(store: CellStore, dataset: str, settings: Settings) -> dict[str, np.ndarray]:
    """Dev scores of the headline table's scorers: the chosen fine-tuned teacher and each student variant's
    seed-averaged scores (the stored seeds)."""
    epochs, teacher = chosen_teacher(store, dataset, settings.teacher)
    if teacher is None:
        raise click.ClickException(f"{dataset}: the fine-tuned teacher cells are missing; run the headline first")
    out = {"teacher_finetuned": np.asarray(teacher["scores"]["dev"], dtype=np.float64)}
    order = plan([dataset], settings, SEEDS, {dataset: epochs})
    for variant in STUDENTS:
        cells = stored_cells(store, order, variant)
        if cells:
            out[variant] = np.mean([c["scores"]["dev"] for c in cells], axis=0)
    return out


def render(rows: dict[str, dict[str, dict[str, list[float]]]], sizes: dict[str, tuple[int, int]], command: str,
           splits: int) -> str:
    lines = [f"Command: `{command}`. Dev only: F1 on one random half of dev at the threshold each rule picks on the "
             f"other half, both ways, {splits} splits (mean ± std); smoothed minus f1_max beside it. Test is not "
             "read.", "", "| dataset (dev pairs, positives) | scorer | f1_max | smoothed | smoothed - f1_max |",
             "|---|---|---|---|---|"]
    for dataset, scorers in rows.items():
        n, positives = sizes[dataset]
        for scorer, figures in scorers.items():
            gap = np.array(figures["smoothed"]) - np.array(figures["f1_max"])
            lines.append(f"| {dataset} ({n}, {positives}) | {scorer} | "
                         + " | ".join(f"{np.mean(figures[r]):.3f} ± {np.std(figures[r]):.3f}" for r in RULES)
                         + f" | {gap.mean():+.3f} ± {gap.std():.3f} |")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--datasets", default="banking77,mediqa2019_rqe,stsbenchmark", show_default=True,
              help="Comma list of headline datasets whose stored cells to read.")
@click.option("--best", multiple=True, metavar="KEY=VALUE", help="The headline command's --best settings.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="The headline command's --set settings.")
@click.option("--splits", type=click.IntRange(min=1), default=20, show_default=True,
              help="Random half splits of dev (each read both ways).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="flipkd cache folder.")
def cli(datasets: str, best: tuple[str, ...], overrides: tuple[str, ...], splits: int, cache_dir: str | None) -> None:
    """Compare dev threshold rules on the headline cells, half of dev against the other (nothing is trained)."""
    from benchmarks._quality_plan import _comma_list
    from benchmarks._real_size import build_real

    names = _comma_list(datasets, list(COUNTS), "--datasets")
    settings = make_settings(best, overrides)
    store = CellStore(CELLS_DIR, shard=True)
    rows: dict[str, dict[str, dict[str, list[float]]]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for dataset in names:
        dev = build_real(SOURCE.get(dataset, dataset), COUNTS[dataset], settings.teacher, cache_dir)["dev"]
        labels = dev["match"].to_numpy() >= 0.5
        sizes[dataset] = (len(labels), int(labels.sum()))
        rows[dataset] = {scorer: half_to_half(scores, labels, splits)
                         for scorer, scores in dev_scores(store, dataset, settings).items()}
    command = "python -m benchmarks.threshold_rules" + "".join(f" --best {b}" for b in best) + "".join(
        f" --set {o}" for o in overrides)
    text = render(rows, sizes, command, splits)
    summary = {"command": command, "splits": splits, "sizes": sizes,
               "rows": {d: {s: {r: [float(np.mean(v)), float(np.std(v))] for r, v in f.items()}
                            for s, f in scorers.items()} for d, scorers in rows.items()}}
    SUMMARY_FILE.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _results.write_section("threshold_rules", text)
    click.echo(text)


if __name__ == "__main__":
    cli()
