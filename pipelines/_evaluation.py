"""Evaluation shared by ``train`` and ``evaluate``: threshold on dev, metrics on every split, plots."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

from components.metrics import best_f1_threshold, classification_metrics
from pipelines import _plots


def evaluate_scores(model_name: str, scores: dict[str, np.ndarray], splits: dict[str, pd.DataFrame],
                    threshold: float | None = None, log: bool = True) -> dict[str, float]:
    """``{split}_{metric}`` for every split; the threshold is chosen on dev for F1 unless given."""
    if threshold is None:
        choose_on = "dev" if "dev" in scores else next(iter(scores))
        threshold = best_f1_threshold(scores[choose_on], splits[choose_on]["match"].to_numpy())
    out: dict[str, float] = {}
    for split, s in scores.items():
        frame = splits[split]
        graded = frame["label"].to_numpy() if frame.attrs.get("graded") else None
        metrics = classification_metrics(s, frame["match"].to_numpy(), threshold, graded=graded)
        out.update({f"{split}_{k}": v for k, v in metrics.items()})
    if log:
        mlflow.log_metrics({f"{model_name}/{k}": v for k, v in out.items() if v == v})
        for split, s in scores.items():
            fig = _plots.similarity_histogram(s, splits[split]["match"].to_numpy(),
                                              f"{model_name} similarity, {split}", threshold)
            mlflow.log_figure(fig, f"plots/{model_name}_{split}_similarity.png")
            _plots.close(fig)
    return out


def log_pr_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], split: str) -> None:
    fig = _plots.precision_recall_curve(curves, f"precision-recall, {split}")
    mlflow.log_figure(fig, f"plots/precision_recall_{split}.png")
    _plots.close(fig)


def all_positive(frame: pd.DataFrame) -> dict[str, float]:
    """The baseline that calls every pair a match: F1 = 2p / (1 + p) and AP = p at match share p."""
    share = float(frame["match"].mean()) if len(frame) else 0.0
    return {"f1": 2 * share / (1 + share) if share else 0.0, "average_precision": share}


def comparison_table(rows: list[tuple[str, dict[str, float]]], split: str) -> list[str]:
    """Lines of a small table: F1 at the dev threshold and average precision of each model on ``split``."""
    width = max(len(name) for name, _ in rows)
    lines = [f"  {'on ' + split:<{width}}   F1     AP"]
    for name, m in rows:
        f1, ap = m.get(f"{split}_f1", m.get("f1")), m.get(f"{split}_average_precision", m.get("average_precision"))
        if f1 is not None:
            lines.append(f"  {name:<{width}}  {f1:.3f}  {ap:.3f}")
    return lines
