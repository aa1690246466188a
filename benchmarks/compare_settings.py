"""Two stored headline settings side by side: the paired comparison a default is chosen on.

    python -m benchmarks.compare_settings --dataset stsbenchmark_fulldev \\
        --setting flip_best-4edbcd669b6c --against flip_best-367397542719 --against teacher_ft_e4-3467aa35cd5b

The headline's "settings tried" table gives each setting's dev AP mean over its seeds; whether one setting beats
another needs the pairs: each setting's scores are averaged over its stored seeds (as the headline table does), and
dev AP, test AP and test F1 at the dev threshold are compared with a paired bootstrap 95% interval over the pairs
(the headline's resamples). ``--same-seeds`` reads the other setting on the first one's seeds only, so a setting
with fewer seeds is not set against the ensemble of more; ``--seeds 1`` (seed 0; ``2``: seeds 0-1, counted as the
headline counts them) reads only those seeds of every student setting, so a figure quoted when fewer seeds were
stored is reprinted after more are. Reads the cells only: nothing trains, nothing is written.
A setting is named as its cell file is, ``<variant>-<settings hash>`` (benchmarks/results/headline_cells/<dataset>/).

Caveat the table cannot show: a ``sup_mode=both`` setting's mix weight is fitted on the dev it is scored on, a small
optimistic bias on dev (none on test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import numpy as np

from benchmarks._cells import CellStore
from benchmarks._quality_plan import parse_seeds
from benchmarks.headline import (
    CELLS_DIR,
    COUNTS,
    SOURCE,
    paired_bootstrap_ap,
    paired_bootstrap_f1,
    scored,
)
from components.models import TEACHER_DEFAULT


class SettingNotStored(click.ClickException):
    """A setting name with no stored cell (exit code 1, the message lists what is stored)."""


def seed_scores(store: CellStore, dataset: str, setting: str,
                seeds: set[int] | None = None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Dev and test scores of ``setting`` (its cell file's name, ``<variant>-<hash>``) on ``dataset`` averaged over its
    stored seeds (only ``seeds`` when given), and the seeds read."""
    found = {}
    for key, cell in store.cells.items():
        d, _, seed_name, _ = key.split("/")
        seed = int(seed_name.removeprefix("seed"))
        if d == dataset and store.file_of(key).stem == setting and (seeds is None or seed in seeds):
            found[seed] = cell
    if not found:
        stored = sorted({store.file_of(k).stem for k in store.cells if k.startswith(dataset + "/")})
        raise SettingNotStored(f"no stored cell of {setting!r} on {dataset!r}"
                               + (f" at seeds {sorted(seeds)}" if seeds is not None else "")
                               + f"; stored there: {', '.join(stored) or 'nothing'}")
    order = sorted(found)
    return (np.mean([found[s]["scores"]["dev"] for s in order], axis=0),
            np.mean([found[s]["scores"]["test"] for s in order], axis=0), order)


def compare(dev_y: np.ndarray, test_y: np.ndarray, first: tuple[np.ndarray, np.ndarray],
            second: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Dev AP, test AP and test F1 (threshold from dev) of two scorers, and first-minus-second paired intervals."""
    a, b = scored(*first, dev_y, test_y), scored(*second, dev_y, test_y)
    return {"first": {k: a[k] for k in ("dev_ap", "ap", "f1")}, "second": {k: b[k] for k in ("dev_ap", "ap", "f1")},
            "dev_ap_ci": paired_bootstrap_ap(dev_y, first[0], second[0]),
            "ap_ci": paired_bootstrap_ap(test_y, first[1], second[1]),
            "f1_ci": paired_bootstrap_f1(test_y, a["decisions"], b["decisions"])}


def render_line(name: str, seeds: list[int], result: dict[str, Any]) -> str:
    a, b = result["first"], result["second"]

    def part(label: str, key: str, ci: str) -> str:
        low, high = result[ci]
        return f"{label} {a[key]:.3f} vs {b[key]:.3f} [{low:+.3f}, {high:+.3f}]"

    return (f"vs {name} (seeds {','.join(map(str, seeds))}): " + "; ".join(
        [part("dev AP", "dev_ap", "dev_ap_ci"), part("test AP", "ap", "ap_ci"), part("test F1", "f1", "f1_ci")]))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--dataset", required=True, type=click.Choice(list(COUNTS)), help="The headline dataset (or lever).")
@click.option("--setting", required=True, metavar="VARIANT-HASH",
              help="The setting under test, named as its cell file, e.g. flip_best-4edbcd669b6c.")
@click.option("--against", multiple=True, required=True, metavar="VARIANT-HASH",
              help="A setting to compare with (repeatable): another flip setting, sup_only-..., teacher_ft_e4-....")
@click.option("--same-seeds", is_flag=True,
              help="Read each --against setting on --setting's seeds only (a teacher cell has seed 0 only: all read).")
@click.option("--seeds", "only_seeds", metavar="N|0,2",
              callback=lambda ctx, param, value: None if value is None else set(parse_seeds(value)),
              help="Read only seeds 0..N-1 (or a comma list: exactly those, '1,' seed 1 alone) of each student "
                   "setting, as the headline's --seeds counts them (default: every stored seed; teachers: seed 0).")
@click.option("--cells", "cells_dir", type=click.Path(file_okay=False, path_type=Path), default=CELLS_DIR,
              show_default=True, help="The headline's cell folder.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="flipkd cache folder (banking77's pairs need the base teacher).")
def cli(dataset: str, setting: str, against: tuple[str, ...], same_seeds: bool, only_seeds: set[int] | None,
        cells_dir: Path, cache_dir: str | None) -> None:
    """Seed-averaged paired comparison of stored headline settings on one dataset (reads cells only)."""
    from benchmarks._real_size import build_real

    store = CellStore(cells_dir, shard=True)
    first_dev, first_test, seeds = seed_scores(store, dataset, setting, only_seeds)
    others = []
    for name in against:
        read = None if name.startswith("teacher") else set(seeds) if same_seeds else only_seeds
        others.append((name, *seed_scores(store, dataset, name, read)))
    splits = build_real(SOURCE.get(dataset, dataset), COUNTS[dataset], TEACHER_DEFAULT, cache_dir)
    dev_y, test_y = splits["dev"]["match"].to_numpy(), splits["test"]["match"].to_numpy()
    for name, dev, test, _ in [(setting, first_dev, first_test, seeds), *others]:
        if (len(dev), len(test)) != (len(dev_y), len(test_y)):
            raise click.ClickException(f"{name}'s cells hold {len(dev)} dev / {len(test)} test scores, the data "
                                       f"{len(dev_y)} / {len(test_y)} pairs: cells of other data")
    own = scored(first_dev, first_test, dev_y, test_y)
    click.echo(f"{dataset} {setting} (seeds {','.join(map(str, seeds))}, scores averaged): dev AP {own['dev_ap']:.3f}, "
               f"test AP {own['ap']:.3f}, test F1 {own['f1']:.3f}; paired bootstrap 95%, first minus second:")
    for name, dev, test, used in others:
        click.echo(render_line(name, used, compare(dev_y, test_y, (first_dev, first_test), (dev, test))))


if __name__ == "__main__":
    cli()
