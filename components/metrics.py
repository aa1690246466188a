"""Pair-classification metrics, with the decision threshold chosen on dev for F1 (METHOD.md, "Inference").

Metric names are built one way everywhere: ``{split}_{metric}`` (for example ``dev_f1``), and the
threshold used for accuracy/F1/precision/recall is reported next to them as ``{split}_threshold``.
scikit-learn computes every metric; flipkd adds only the rule that picks the decision threshold on dev.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn import metrics


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


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.any() and (~y).any())


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """scikit-learn's ROC-AUC (ties count half); NaN when one class is absent, where it is undefined."""
    y = np.asarray(labels) >= 0.5
    return float(metrics.roc_auc_score(y, np.asarray(scores, dtype=np.float64))) if _both_classes(y) else float("nan")


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """scikit-learn's average precision (no interpolation); NaN without a positive pair."""
    y = np.asarray(labels) >= 0.5
    return float(metrics.average_precision_score(y, np.asarray(scores, dtype=np.float64))) if y.any() else float("nan")


def classification_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float,
                           graded: np.ndarray | None = None) -> dict[str, float]:
    """F1, precision, recall, accuracy at ``threshold``; ROC-AUC, AP; Spearman/Pearson on graded labels."""
    scores, y = np.asarray(scores, dtype=np.float64), np.asarray(labels) >= 0.5
    predicted = scores >= threshold
    precision, recall, f1, _ = metrics.precision_recall_fscore_support(y, predicted, average="binary",
                                                                       zero_division=0.0)
    out = {
        "f1": float(f1), "precision": float(precision), "recall": float(recall),
        "accuracy": float(metrics.accuracy_score(y, predicted)) if len(y) else 0.0,
        "roc_auc": roc_auc(scores, y), "average_precision": average_precision(scores, y), "threshold": float(threshold),
        "pairs": float(len(y)),
    }
    if graded is not None and len(np.unique(graded)) > 2:
        out["spearman"] = float(spearmanr(scores, graded).statistic)
        out["pearson"] = float(pearsonr(scores, graded).statistic)
    return out
