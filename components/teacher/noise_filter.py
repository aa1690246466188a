"""Dual-threshold noise filter (METHOD.md, "Teacher signal and the dual-threshold noise filter").

A labelled positive whose teacher score t < delta_pos, or a labelled negative with t > delta_neg, is
a pair where the teacher contradicts the ground truth: it is dropped. With scope ``teacher_terms``
(default) it is dropped from the teacher-driven losses (L_dist, L_MCL) only; with ``all`` it is
dropped from training altogether. In a batch, an off-diagonal pair whose teacher score exceeds
delta_neg is a probable false negative and leaves the contrastive denominator
(:func:`false_negative_mask`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

SCOPES = ("teacher_terms", "all")


@dataclass
class FilterReport:
    """What the filter did, in a form pipelines log as JSON."""

    pairs_seen: int
    positives_seen: int
    negatives_seen: int
    dropped_positive_below_delta_pos: int
    dropped_negative_above_delta_neg: int
    kept: int
    delta_pos: float
    delta_neg: float
    scope: str
    examples: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return self.dropped_positive_below_delta_pos + self.dropped_negative_above_delta_neg

    @property
    def fraction_dropped(self) -> float:
        return self.dropped / self.pairs_seen if self.pairs_seen else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dropped"] = self.dropped
        out["fraction_dropped"] = self.fraction_dropped
        return out

    def summary(self) -> str:
        return (
            f"dropped {self.dropped} of {self.pairs_seen} pairs ({100 * self.fraction_dropped:.1f}%): "
            f"{self.dropped_positive_below_delta_pos} positives with teacher score < delta_pos={self.delta_pos}, "
            f"{self.dropped_negative_above_delta_neg} negatives with teacher score > delta_neg={self.delta_neg}"
        )


def _check_unit(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


class DualThresholdFilter:
    """Keep mask of the pairs whose teacher score does not contradict the gold label.

    Args:
        delta_pos: a positive with teacher score below this is dropped (METHOD.md default 0.5).
        delta_neg: a negative with teacher score above this is dropped (METHOD.md default 0.5).
        scope: ``teacher_terms`` (drop from L_dist and L_MCL only) or ``all`` (drop from training).
        n_examples: how many examples of each rule the report keeps.

    Example:
        >>> keep, report = DualThresholdFilter(0.5, 0.5)([0.9, 0.2, 0.7], [1, 1, 0])
        >>> keep.tolist(), report.dropped
        ([True, False, False], 2)
    """

    def __init__(self, delta_pos: float = 0.5, delta_neg: float = 0.5, scope: str = "teacher_terms",
                 n_examples: int = 5) -> None:
        _check_unit("delta_pos", delta_pos)
        _check_unit("delta_neg", delta_neg)
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        self.delta_pos, self.delta_neg, self.scope, self.n_examples = delta_pos, delta_neg, scope, n_examples

    @property
    def drops_from_training(self) -> bool:
        return self.scope == "all"

    def __call__(self, teacher_scores: Sequence[float] | np.ndarray | torch.Tensor,
                 labels: Sequence[float] | np.ndarray | torch.Tensor,
                 ids: Sequence[Any] | None = None) -> tuple[np.ndarray, FilterReport]:
        t = np.asarray(teacher_scores, dtype=np.float64).reshape(-1)
        y = np.asarray(labels, dtype=np.float64).reshape(-1)
        if t.shape != y.shape:
            raise ValueError(f"teacher_scores has {t.size} entries but labels has {y.size}")
        positive = y >= 0.5
        drop_pos = positive & (t < self.delta_pos)
        drop_neg = ~positive & (t > self.delta_neg)
        keep = ~(drop_pos | drop_neg)
        ids = list(range(t.size)) if ids is None else list(ids)
        report = FilterReport(
            pairs_seen=int(t.size), positives_seen=int(positive.sum()), negatives_seen=int((~positive).sum()),
            dropped_positive_below_delta_pos=int(drop_pos.sum()),
            dropped_negative_above_delta_neg=int(drop_neg.sum()), kept=int(keep.sum()),
            delta_pos=self.delta_pos, delta_neg=self.delta_neg, scope=self.scope,
            examples={
                "positive_below_delta_pos": [ids[i] for i in np.flatnonzero(drop_pos)[: self.n_examples]],
                "negative_above_delta_neg": [ids[i] for i in np.flatnonzero(drop_neg)[: self.n_examples]],
            },
        )
        return keep, report


def false_negative_mask(teacher: torch.Tensor, delta_neg: float) -> torch.Tensor:
    """Bool [N, N]: True where an off-diagonal pair may serve as a negative (t_ij <= delta_neg)."""
    n = teacher.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=teacher.device)
    return off_diagonal & (teacher <= delta_neg)
