"""Figures logged with each evaluation: similarity histograms and the precision-recall curve."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def similarity_histogram(scores: np.ndarray, labels: np.ndarray, title: str, threshold: float | None = None):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    y = np.asarray(labels) >= 0.5
    bins = np.linspace(float(np.min(scores)), float(np.max(scores)) + 1e-9, 40)
    ax.hist(scores[y], bins=bins, alpha=0.6, label=f"match ({int(y.sum())})")
    ax.hist(scores[~y], bins=bins, alpha=0.6, label=f"no match ({int((~y).sum())})")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_title(title)
    ax.set_xlabel("similarity")
    ax.legend()
    fig.tight_layout()
    return fig


def precision_recall_curve(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str):
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, (scores, labels) in curves.items():
        y = np.asarray(labels)[np.argsort(-np.asarray(scores), kind="stable")] >= 0.5
        tp = np.cumsum(y)
        precision, recall = tp / np.arange(1, len(y) + 1), tp / max(1, y.sum())
        ax.plot(recall, precision, label=name)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)
