"""Teacher-labelled extra pairs: the distillation signal beyond the gold labels (METHOD.md, "Teacher signal").

From the training texts, unlabelled in-domain pairs are built (half nearest neighbours by the teacher,
half random pairs, by default) and scored by the calibrated teacher. They carry no gold label, so they
never reach L_sup; L_dist learns from all of them; L_MCL uses one as an anchor only when the teacher is
confident it matches (score >= ``positive_threshold``), which is the noise filter's confidence rule
applied to pairs that have only the teacher's word.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class AugmentConfig:
    per_pair: float = 0.0
    neighbour_share: float = 0.5
    positive_threshold: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.per_pair < 0:
            raise ValueError(f"extra pairs per labelled pair must be >= 0, got {self.per_pair}")
        if not 0 <= self.neighbour_share <= 1 or not 0 <= self.positive_threshold <= 1:
            raise ValueError("neighbour_share and positive_threshold must be in [0, 1]")


@dataclass
class ExtraPairs:
    index_a: np.ndarray  # rows into the text list
    index_b: np.ndarray
    scores: np.ndarray  # calibrated teacher scores t in [0, 1]
    neighbour: np.ndarray  # bool: built from nearest neighbours (else random)

    def __len__(self) -> int:
        return len(self.index_a)

    def report(self, positive_threshold: float) -> dict[str, float]:
        return {"extra_pairs": len(self), "extra_pairs_neighbour": int(self.neighbour.sum()),
                "extra_pairs_random": int((~self.neighbour).sum()),
                "extra_pairs_confident_positive": int((self.scores >= positive_threshold).sum())}


def teacher_labelled_pairs(embeddings: np.ndarray, calibrate: Callable[[np.ndarray], np.ndarray], n: int,
                           config: AugmentConfig, existing: Sequence[tuple[int, int]] = ()) -> ExtraPairs:
    """``n`` new pairs over the texts whose teacher ``embeddings`` (unit rows) are given."""
    count = len(embeddings)
    if n <= 0 or count < 2:
        empty = np.zeros(0, dtype=np.int64)
        return ExtraPairs(empty, empty, np.zeros(0), np.zeros(0, dtype=bool))
    rng = np.random.default_rng(config.seed)
    seen = {tuple(sorted(p)) for p in existing}
    pairs: list[tuple[int, int, bool]] = []
    n_neighbour = round(n * config.neighbour_share)
    similarity = embeddings @ embeddings.T
    np.fill_diagonal(similarity, -np.inf)
    ranked = np.argsort(-similarity, axis=1)
    for a in rng.permutation(count):
        if len(pairs) >= n_neighbour:
            break
        for b in ranked[a, : min(5, count - 1)]:
            key = tuple(sorted((int(a), int(b))))
            if key not in seen:
                seen.add(key)
                pairs.append((int(a), int(b), True))
                break
    attempts = 0
    while len(pairs) < n and attempts < 20 * n:
        a, b = (int(x) for x in rng.integers(0, count, size=2))
        attempts += 1
        key = tuple(sorted((a, b)))
        if a != b and key not in seen:
            seen.add(key)
            pairs.append((a, b, False))
    index_a = np.array([p[0] for p in pairs], dtype=np.int64)
    index_b = np.array([p[1] for p in pairs], dtype=np.int64)
    cosine = np.einsum("nd,nd->n", embeddings[index_a], embeddings[index_b])
    return ExtraPairs(index_a, index_b, np.asarray(calibrate(cosine), dtype=np.float64),
                      np.array([p[2] for p in pairs], dtype=bool))
