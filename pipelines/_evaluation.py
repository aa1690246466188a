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
