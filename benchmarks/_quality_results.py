"""The quality benchmark's results: ``quality.json`` (merged across runs, JSON without NaN) and its rendering as
the ``quality`` section of RESULTS.md, where cells of other settings than the latest run's are marked."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
import numpy as np

from benchmarks._quality_estimate import _duration
from benchmarks._quality_plan import VARIANTS, _prompt_name
from benchmarks.datasets import DATASETS


def _finite(value: Any) -> float | None:
    """A float, or None for a missing or non-finite value (JSON has no NaN)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def load_results(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"datasets": {}, "settings": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data.get("datasets"), dict):
            raise ValueError("no 'datasets' object")
    except (ValueError, AttributeError) as err:
        backup = path.with_suffix(".json.bak")
        path.replace(backup)
        click.echo(f"warning: {path} was unreadable ({err}); moved to {backup}, starting a new file", err=True)
        return {"datasets": {}, "settings": {}}
    data.setdefault("settings", {})
    return data


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return _finite(value)
    return str(value)


def save_results(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("f1_mean") is None:
        return "–"
    extra = f"AP {_num(entry.get('ap_mean'))}"
    if "spearman_mean" in entry:
        extra += f", ρ {_num(entry['spearman_mean'])}"
    return f"{entry['f1_mean']:.3f} ± {entry['f1_std']:.3f} ({extra})"


MARKERS = ("†", "‡", "§", "¶")


def render_markdown(data: dict[str, Any]) -> str:
    datasets = [d for d in DATASETS if d in data["datasets"]] + sorted(set(data["datasets"]) - set(DATASETS))
    present = {v for d in datasets for v in data["datasets"][d].get("variants", {})}
    variants = [v for v in VARIANTS if v in present] + sorted(present - set(VARIANTS))
    s = data.get("settings", {})
    lines = [
        "Test F1 at the threshold chosen on dev, mean ± std over seeds (teacher variants: one run, std 0), "
        "with test average precision (AP) and, for stsbenchmark, Spearman ρ of the cosine against the graded "
        "score. Students are distilled from the fine-tuned teacher.",
        "",
        "| variant | " + " | ".join(datasets) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    current, earlier = s.get("settings_hash"), {}  # earlier settings' hash -> (marker, its cells' description)
    same_settings: dict[str, list[str]] = {}  # another run at the latest settings -> its variants (not marked)
    for variant in variants:
        cells = []
        for d in datasets:
            entry = data["datasets"][d].get("variants", {}).get(variant)
            cell = _cell(entry)
            run = (entry or {}).get("parent_run_id")
            if entry and entry.get("settings_hash") == current and run and run != s.get("parent_run_id"):
                if variant not in same_settings.setdefault(run, []):  # a run by name merged into the table
                    same_settings[run].append(variant)
            if entry and current and entry.get("settings_hash") != current:
                marker, _ = earlier.setdefault(entry.get("settings_hash"), (
                    MARKERS[len(earlier)] if len(earlier) < len(MARKERS) else f"[{len(earlier) + 1}]",
                    (f"{entry['settings_brief']}; " if entry.get("settings_brief") else "")
                    + f"parent run `{entry.get('parent_run_id')}`"))
                cell += f" {marker}"
            cells.append(cell)
        lines.append(f"| `{variant}` | " + " | ".join(cells) + " |")
    for marker, described in earlier.values():
        lines += ["", f"{marker} From an earlier run with other settings than the rest ({described}): not comparable "
                      "with the unmarked cells; re-run these variants to refresh them."]
    lines += ["", "Per dataset (pairs train/dev/test; flip_full: share of train pairs the noise filter dropped, "
                  "student training pairs/s and seconds per run):", ""]
    for d in datasets:
        entry = data["datasets"][d]
        sizes = entry.get("sizes", {})
        size = "/".join(str(sizes.get(k, {}).get("pairs", "?")) for k in ("train", "dev", "test"))
        full = entry.get("variants", {}).get("flip_full", {})
        detail = f"- {d}: {size} pairs"
        if "filter_fraction_dropped_mean" in full:
            detail += f"; filter dropped {100 * full['filter_fraction_dropped_mean']:.1f}%"
        if "train_pairs_per_s_mean" in full:
            detail += (f"; {full['train_pairs_per_s_mean']:.2f} pairs/s, "
                       f"{full.get('train_seconds_mean', float('nan')):.0f} s per run")
        lines.append(detail)
    hashes = {v.get("settings_hash") for d in datasets for v in data["datasets"][d].get("variants", {}).values()}
    if len(hashes) > 1 and not current:  # files written before the latest run's hash was recorded
        lines += ["", f"Note: the cells come from {len(hashes)} different settings (see `settings_hash` and "
                      "`parent_run_id` per cell in `benchmarks/results/quality.json`)."]
    if s:
        enc, train, ft, loss = (s.get(k, {}) for k in ("encoder", "train", "teacher_finetune", "loss"))
        lines += [
            "", "Settings of the latest run:",
            f"- student `{s.get('student')}`, base teacher `{s.get('teacher')}` (fine-tuned {ft.get('epochs')} "
            f"epoch(s), CoSENT, lr {ft.get('learning_rate')}), seeds {s.get('seeds')}, data seed {s.get('data_seed')}",
            f"- pairs at most: train {s.get('max_train')}, dev {s.get('max_dev')}, test {s.get('max_test')}",
            f"- student: LoRA rank {enc.get('rank')} (alpha {enc.get('alpha')}), layer {enc.get('layer')} "
            f"`{enc.get('module')}`, pooling {enc.get('pooling')}, max length {enc.get('max_length')}, "
            f"prompt {_prompt_name(enc)}; "
            f"lr {train.get('learning_rate')}, batch {train.get('batch_size')}, epochs {train.get('epochs')}"
            + (f", max steps {train.get('max_steps')}" if train.get("max_steps") else "")
            + f", precision {train.get('precision')}; loss weights sup/dist/mcl {loss.get('w_sup')}/"
            f"{loss.get('w_dist')}/{loss.get('w_mcl')}; filter scope {s.get('filter_scope')}",
            f"- wall time {_duration(s.get('wall_seconds', 0))} (estimated {_duration(s.get('estimated_seconds', 0))})"
            f"; MLflow experiment `{s.get('experiment')}`, parent run `{s.get('parent_run_id')}`",
            f"- command: `{s.get('command')}`",
        ]
        lines += [f"- same settings, from parent run `{run}`: " + ", ".join(f"`{v}`" for v in names)
                  for run, names in same_settings.items()]
    return "\n".join(lines)
