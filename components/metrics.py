"""Pair-classification metrics, with the decision threshold chosen on dev for F1 (METHOD.md, "Inference").

Metric names are built one way everywhere: ``{split}_{metric}`` (for example ``dev_f1``), and the
threshold used for accuracy/F1/precision/recall is reported next to them as ``{split}_threshold``.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, rankdata, spearmanr


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold (match when score >= threshold) that maximises F1 on these pairs.

    It is the midpoint between the lowest score predicted a match and the next lower score, not a score
    itself: a threshold equal to a dev score would flip that pair's decision on the least numerical noise
    (an ONNX or int8 copy of the model, another thread count).
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels) >= 0.5
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last_of_value = np.r_[s[1:] != s[:-1], True]  # cut only between distinct scores
    f1 = 2 * tp / (tp + fp + y.sum())
    f1 = np.where(last_of_value, f1, -1.0)
    if not y.any():
        return float(s[0] + 1e-6) if len(s) else 0.5
    best = int(np.argmax(f1))
    return float((s[best] + s[best + 1]) / 2) if best + 1 < len(s) else float(s[best] - 1e-6)


def best_f1(scores: np.ndarray, labels: np.ndarray) -> float:
    """F1 at :func:`best_f1_threshold` of the same pairs: the dev score that model selection reads."""
    return classification_metrics(scores, labels, best_f1_threshold(scores, labels))["f1"]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney form with average ranks for ties; NaN when one class is absent."""
    y = np.asarray(labels) >= 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Sum over distinct thresholds of (R_k - R_{k-1}) P_k, as scikit-learn computes it."""
    scores, y = np.asarray(scores, dtype=np.float64), np.asarray(labels) >= 0.5
    if not y.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], y[order]
    last_of_value = np.r_[s[1:] != s[:-1], True]
    tp, fp = np.cumsum(y)[last_of_value], np.cumsum(~y)[last_of_value]
    precision, recall = tp / (tp + fp), tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def classification_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float,
                           graded: np.ndarray | None = None) -> dict[str, float]:
    """F1, precision, recall, accuracy at ``threshold``; ROC-AUC, AP; Spearman/Pearson on graded labels."""
    scores, y = np.asarray(scores, dtype=np.float64), np.asarray(labels) >= 0.5
    predicted = scores >= threshold
    tp, fp, fn = int((predicted & y).sum()), int((predicted & ~y).sum()), int((~predicted & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    out = {
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "precision": precision, "recall": recall, "accuracy": float((predicted == y).mean()) if len(y) else 0.0,
        "roc_auc": roc_auc(scores, y), "average_precision": average_precision(scores, y), "threshold": float(threshold),
        "pairs": float(len(y)),
    }
    if graded is not None and len(np.unique(graded)) > 2:
        out["spearman"] = float(spearmanr(scores, graded).statistic)
        out["pearson"] = float(pearsonr(scores, graded).statistic)
    return out
