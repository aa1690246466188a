"""Stability of the composite loss at real size: the flipped student against L_sup alone, with per-part curves.

    python -m benchmarks.stability                      # train's defaults: flip and sup, 3 datasets, 2 seeds
    python -m benchmarks.stability --preset before      # the settings train had before the stability fix
    python -m benchmarks.stability --label lr3e-4 --set learning_rate=3e-4    # a trial, kept as its own rows
    python -m benchmarks.stability --budget 90m         # run the missing cells that fit, then stop cleanly

Each (dataset, variant, seed) cell trains the packaged student with ``pipelines.train.train_student`` for
``--steps`` steps on at least 1,500 training pairs, distilled from the teacher fine-tuned on the same train split
(as the main chain does), and scores dev (at least 500 pairs; MEDIQA's dev grows from its training file:
``benchmarks.datasets.build(min_dev=...)``). Variants: ``flip`` (L_sup + L_dist + L_MCL, noise filter) and ``sup``
(L_sup alone), otherwise the same settings. A cell records dev F1 / AP / ROC-AUC, the divergence guard's
warnings, and each loss part and the gradient norm averaged over every tenth of the run.

Cells are stored the moment they finish (``benchmarks/results/stability_cells.json``, keyed by dataset, variant,
seed and settings hash): a later run skips them. ``benchmarks/results/stability.json`` summarises the defaults'
rows (``flip_dev_ap``, ``sup_dev_ap``, sizes, steps, seeds, ``guard_warnings``) and the ``before`` rows, and the
``stability`` section of ``benchmarks/RESULTS.md`` shows every label's rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from benchmarks import _results
from benchmarks._cells import Budget, CellStore, cell_key, parse_budget
from benchmarks._real_size import CURVES, build_real, train_cell
from benchmarks.datasets import DATASETS
from components.losses.composite_loss import LossConfig
from components.models import TEACHER_DEFAULT
from components.student.lora_encoder import EncoderConfig
from components.teacher.finetune import TeacherFinetuneConfig
from components.training.divergence_guard import WATCHED_PREFIXES, DivergenceGuard
from components.training.trainer import TrainConfig

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CELLS_FILE, SUMMARY_FILE = RESULTS_DIR / "stability_cells.json", RESULTS_DIR / "stability.json"
EXPERIMENT = "flipkd-benchmark"
COUNTS = {"max_train": 1600, "max_dev": 600, "max_test": 16}  # test is not read: dev decides everything here
STEPS = 200
VARIANTS = {"flip": ("sup", "dist", "mcl"), "sup": ("sup",)}
SUP_FIELDS = ("w_sup", "sup_mode")  # the loss settings L_sup alone depends on
DEFAULT_LABEL = "defaults"
# train's settings before the stability fix (stop 18), pinned here so the comparison survives later defaults
BEFORE = {"train.learning_rate": 1e-3, "clip_mode": "value", "clip_value": 1.0, "teacher_warmup_ratio": 0.0,
          "train.warmup_ratio": 0.05, "train.weight_decay": 0.1, "scalar_learning_rate": 1e-2, "w_sup": 1.0,
          "w_dist": 1.0, "w_mcl": 1.0, "temperature": 0.05, "margin": 0.06, "distill_mode": "mse", "rank": 32,
          "alpha": 64.0}
PRESETS = {"defaults": {}, "before": BEFORE}
ASSUMED_CELL_SECONDS = 240.0


@dataclasses.dataclass
class Settings:
    label: str
    encoder: EncoderConfig
    loss: LossConfig
    train: TrainConfig
    teacher: str
    teacher_finetune: TeacherFinetuneConfig
    counts: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder.to_dict(), "loss": self.loss.to_dict(), "train": self.train.to_dict(),
                "teacher": self.teacher, "teacher_finetune": dataclasses.asdict(self.teacher_finetune),
                "counts": self.counts, "guard": DivergenceGuard().settings()}

    def hash(self, variant: str = "flip") -> str:
        """What makes two cells of ``variant`` the same run: ``sup`` ignores every setting of the teacher-driven
        parts, so trials that change only those share its cells."""
        data = self.as_dict()
        data["train"] = {k: v for k, v in data["train"].items() if k != "seed"}
        data["loss"] = {k: v for k, v in data["loss"].items() if k != "parts"}
        if variant == "sup":
            data["loss"] = {k: v for k, v in data["loss"].items() if k in SUP_FIELDS}
            data["train"].pop("teacher_warmup_ratio", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def brief(self) -> str:
        t, lo, e = self.train, self.loss, self.encoder
        return (f"lr {t.learning_rate:g}, clip {t.clip_mode} {t.clip_value:g}, teacher warm-up "
                f"{t.teacher_warmup_ratio:g}, w {lo.w_sup:g}/{lo.w_dist:g}/{lo.w_mcl:g}, tau {lo.temperature:g}, "
                f"distill {lo.distill_mode}, rank {e.rank}, LoRA blocks {e.lora_layers or 'all'}, "
                f"{t.max_steps} steps of {t.batch_size}, precision {t.precision}")


def make_settings(label: str, preset: str, overrides: tuple[str, ...], steps: int, precision: str) -> Settings:
    from benchmarks._quality_plan import apply_overrides

    encoder, loss = EncoderConfig(), LossConfig()
    train = TrainConfig(max_steps=steps, precision=precision)
    finetune = TeacherFinetuneConfig(seed=0)
    configs = {"encoder": encoder, "loss": loss, "train": train, "teacher_finetune": finetune}
    apply_overrides(configs, [f"{k}={v}" for k, v in PRESETS[preset].items()] + list(overrides))
    return Settings(label, encoder, loss, train, TEACHER_DEFAULT, finetune, dict(COUNTS))


def run_cell(dataset: str, splits: dict, variant: str, seed: int, settings: Settings, teacher_dir: Path,
             cache_dir: str | None) -> dict[str, Any]:
    loss = dataclasses.replace(settings.loss, parts=VARIANTS[variant])
    train = dataclasses.replace(settings.train, seed=seed)
    cell = train_cell(f"{dataset}/{variant}/seed{seed}", splits, settings.encoder, loss, train, teacher_dir, cache_dir,
                      EXPERIMENT, {"flipkd.benchmark": "stability", "benchmark.dataset": dataset,
                                   "benchmark.variant": variant, "benchmark.label": settings.label})
    m = cell.pop("metrics")
    cell.pop("scores")
    return {"dataset": dataset, "variant": variant, "seed": seed, "labels": [settings.label],
            "settings_hash": settings.hash(variant), "settings_brief": settings.brief(), "dev_f1": m["dev_f1"],
            "dev_ap": m["dev_average_precision"], "dev_roc_auc": m["dev_roc_auc"], "dev_threshold": m["dev_threshold"],
            **cell}


def summarise(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per label and dataset: mean dev figures of each variant, the seeds, the guard's warnings."""
    out: dict[str, Any] = {}
    for cell in cells:
        for label in cell.get("labels") or [cell["label"]]:
            out.setdefault(label, {}).setdefault(cell["dataset"], {"cells": []})["cells"].append(cell)
    for datasets in out.values():
        for row in datasets.values():
            cells = row.pop("cells")
            for variant in VARIANTS:
                mine = [c for c in cells if c["variant"] == variant]
                if mine:
                    for key in ("dev_ap", "dev_f1", "dev_roc_auc"):
                        row[f"{variant}_{key}"] = float(np.mean([c[key] for c in mine]))
                        row[f"{variant}_{key}_std"] = float(np.std([c[key] for c in mine], ddof=1)) \
                            if len(mine) > 1 else 0.0
                    row[f"{variant}_seeds"] = sorted(c["seed"] for c in mine)
                    row[f"{variant}_curves"] = {k: np.mean([c["curves"][k] for c in mine if k in c["curves"]],
                                                           axis=0).tolist()
                                                for k in CURVES if any(k in c["curves"] for c in mine)}
            row["guard_warnings"] = int(sum(c["guard_warnings"] for c in cells))
            row["guard_warnings_today"] = warnings_today(cells)
            row["guard_shown"] = guard_count(cells)
            row["settings_brief"] = next((c["settings_brief"] for c in cells if c["variant"] == "flip"),
                                        cells[0]["settings_brief"])
            row["steps"] = cells[0]["steps"]
            row["teacher_dev_ap"] = cells[0].get("teacher_dev_ap")
    return out


def render(summary: dict[str, Any], sizes: dict[str, dict[str, int]], command: str) -> str:
    lines = [f"Command: `{command}` (and one run per label: `--preset before`; trials `--label NAME --set ...`). "
             "Dev F1 at the dev-chosen threshold and dev AP, mean ± std over seeds; the teacher is MiniLM fine-tuned "
             "on each train split (1 epoch CoSENT); `bf16` where the CPU has native bf16 (precision auto). Guard "
             "warnings `a → b`: a counted by the guard the runs had (the trials before `defaults` ran with an earlier "
             "one, a 5-step mean against a running average), b by today's guard replaying their step metrics "
             "(`--rejudge`).",
             "", "Pairs train/dev: " + "; ".join(f"{d} {s['train']}/{s['dev']}" for d, s in sizes.items()) + "."]
    for label, datasets in summary.items():
        first = next(iter(datasets.values()))
        lines += ["", f"**{label}** ({first['settings_brief']})", "",
                  "| dataset | flip dev F1 | flip dev AP | sup dev F1 | sup dev AP | teacher dev AP | guard warnings |",
                  "|---|---|---|---|---|---|---|"]
        for dataset, row in datasets.items():
            cells = []
            for variant in VARIANTS:
                for key in ("dev_f1", "dev_ap"):
                    mean = row.get(f"{variant}_{key}")
                    cells.append("-" if mean is None else f"{mean:.3f} ± {row[f'{variant}_{key}_std']:.3f}")
            teacher = row.get("teacher_dev_ap")
            lines.append(f"| {dataset} | " + " | ".join(cells) + f" | {'-' if teacher is None else f'{teacher:.3f}'} "
                         f"| {row['guard_shown']} |")
        lines += ["", "Per-part curves of `flip` (mean over seeds), each tenth of the run:", "",
                  "| dataset | series | " + " | ".join(f"{10 * (i + 1)}%" for i in range(10)) + " |",
                  "|---|---|" + "---|" * 10]
        for dataset, row in datasets.items():
            for key, values in row.get("flip_curves", {}).items():
                lines.append(f"| {dataset} | {key} | " + " | ".join(f"{v:.3g}" for v in values) + " |")
    return "\n".join(lines)


def rejudge(store: CellStore) -> int:
    """Replay each stored run's step metrics (from its MLflow record) through today's divergence guard and keep the
    count beside the one taken when it ran: trials judged by an earlier guard stay comparable without re-training.
    Dev-collapse checks are not replayed (they need the dev scores of each evaluation)."""
    from mlflow.tracking import MlflowClient

    client, settings, done = MlflowClient(), DivergenceGuard().settings(), 0
    for key, cell in store.cells.items():
        try:
            run = client.get_run(cell["run_id"])
        except Exception:  # noqa: BLE001 - a run from another tracking store: nothing to replay
            continue
        steps: dict[int, dict[str, float]] = {}
        for name in run.data.metrics:
            if name.startswith(WATCHED_PREFIXES):
                for m in client.get_metric_history(cell["run_id"], name):
                    steps.setdefault(m.step, {})[name] = m.value
        guard = DivergenceGuard()
        for step in sorted(steps):
            guard.observe(step, steps[step])
        store.put(key, {**cell, "guard_now": {"settings": settings, "warnings": len(guard.warnings),
                                              "messages": [m for _, m in guard.warnings]}})
        done += 1
    return done


def warnings_today(cells: list[dict[str, Any]]) -> int | None:
    """Warnings of today's guard over ``cells`` when a replay (``--rejudge``) judged every one of them, else None."""
    today = DivergenceGuard().settings()
    if all(c.get("guard_now", {}).get("settings") == today for c in cells):
        return int(sum(c["guard_now"]["warnings"] for c in cells))
    return None


def guard_count(cells: list[dict[str, Any]]) -> str:
    """Warnings counted when the runs ran, and by today's guard when a replay counted otherwise."""
    then, now = sum(c["guard_warnings"] for c in cells), warnings_today(cells)
    return f"{then} → {now}" if now is not None and now != then else str(then)


def write_outputs(store: CellStore, command: str) -> dict[str, Any]:
    summary = summarise(list(store.cells.values()))
    sizes = {c["dataset"]: c["sizes"] for c in store.cells.values()}
    headline = {}
    for label in (DEFAULT_LABEL, "before"):
        for dataset, row in summary.get(label, {}).items():
            headline.setdefault(label, {})[dataset] = {
                "flip_dev_ap": row.get("flip_dev_ap"), "sup_dev_ap": row.get("sup_dev_ap"),
                "flip_dev_f1": row.get("flip_dev_f1"), "sup_dev_f1": row.get("sup_dev_f1"),
                "seeds": row.get("flip_seeds"), "guard_warnings": row["guard_warnings"],
                "guard_warnings_today": row.get("guard_warnings_today"),
                "sizes": sizes.get(dataset), "steps": row["steps"], "settings": row["settings_brief"]}
    data = {**headline.get(DEFAULT_LABEL, {}), "before": headline.get("before", {}),
            "guard_warnings": sum(r["guard_warnings"] for r in headline.get(DEFAULT_LABEL, {}).values()),
            "command": command}
    SUMMARY_FILE.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    _results.write_section("stability", render(summary, sizes, command))
    return data


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--datasets", default=",".join(DATASETS), show_default=True, help="Comma list of datasets.")
@click.option("--seeds", type=click.IntRange(min=1), default=2, show_default=True, help="Seeds 0..N-1 per variant.")
@click.option("--variants", default=",".join(VARIANTS), show_default=True, help="Comma list of flip, sup.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="defaults", show_default=True,
              help="defaults: train's current defaults; before: the settings train had before the stability fix.")
@click.option("--label", default=None, help="Name of these rows in RESULTS.md (default: the preset's name).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Any EncoderConfig, LossConfig or TrainConfig field (as benchmarks.quality --set); repeatable.")
@click.option("--steps", type=click.IntRange(min=1), default=STEPS, show_default=True, help="Steps per run.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="auto: native bf16 where the CPU has it (to save time), else fp32.")
@click.option("--budget", default=None, help="Stop cleanly before this much wall time (e.g. 150m, 2h).")
@click.option("--render", "render_only", is_flag=True, help="Only rewrite RESULTS.md and stability.json from cells.")
@click.option("--rejudge", "rejudge_runs", is_flag=True,
              help="Replay the stored runs' step metrics through today's divergence guard, then render.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="flipkd cache folder.")
def cli(datasets: str, seeds: int, variants: str, preset: str, label: str | None, overrides: tuple[str, ...],
        steps: int, precision: str, budget: str | None, render_only: bool, rejudge_runs: bool,
        cache_dir: str | None) -> None:
    """Train flip and sup students at real size and record dev figures, guard warnings and loss curves."""
    from benchmarks._quality_runs import finetune_cached
    from pipelines import _mlflow

    names = [d.strip() for d in datasets.split(",") if d.strip()]
    chosen = [v.strip() for v in variants.split(",") if v.strip()]
    if set(names) - set(DATASETS) or set(chosen) - set(VARIANTS):
        raise click.BadParameter(f"datasets among {DATASETS}, variants among {tuple(VARIANTS)}")
    settings = make_settings(label or preset, preset, overrides, steps, precision)
    clock = Budget(parse_budget(budget) if budget else None)
    store = CellStore(CELLS_FILE)
    command = "python -m benchmarks.stability"
    if rejudge_runs:
        click.echo(f"replayed {rejudge(store)} of {len(store.cells)} stored runs through today's guard")
    if render_only or rejudge_runs:
        write_outputs(store, command)
        return
    with _mlflow.run("stability", EXPERIMENT):
        for dataset in names:
            splits = build_real(dataset, settings.counts, settings.teacher, cache_dir)
            splits.pop("test")
            teacher_dir, _ = finetune_cached(dataset, splits, settings.teacher, settings.teacher_finetune, cache_dir,
                                             progress=False)
            for variant in chosen:
                for seed in range(seeds):
                    key = cell_key(dataset, variant, seed, settings.hash(variant))
                    if key in store:  # the same run under another label (a trial that leaves L_sup alone)
                        labels = store.get(key).setdefault("labels", [store.get(key).get("label")])
                        if settings.label not in labels:
                            store.put(key, {**store.get(key), "labels": [*labels, settings.label]})
                        continue
                    done = [c["seconds"] for c in store.cells.values() if c["dataset"] == dataset]
                    if not clock.allows(float(np.mean(done)) if done else ASSUMED_CELL_SECONDS):
                        click.echo(f"budget reached after {clock.elapsed() / 60:.0f} min; the missing cells run next "
                                   "time (same command)")
                        write_outputs(store, command)
                        return
                    cell = run_cell(dataset, splits, variant, seed, settings, teacher_dir, cache_dir)
                    store.put(key, cell)
                    click.echo(f"[{settings.label}] {dataset} {variant} seed {seed}: dev F1 {cell['dev_f1']:.3f}, "
                               f"AP {cell['dev_ap']:.3f}, guard warnings {cell['guard_warnings']} "
                               f"({cell['seconds']:.0f} s)")
    data = write_outputs(store, command)
    click.echo(json.dumps(data, indent=2))


if __name__ == "__main__":
    cli()
