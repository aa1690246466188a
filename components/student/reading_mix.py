"""The mixed reading of a student trained both ways (``sup_mode both``): one match score from its cosine and its
decoder path.

Formula::

    logit P(match) = w * (scale * cos(z_a, z_b) + bias) + (1 - w) * (log p(yes | pair) - log p(no | pair))

Both terms are log-odds of a match, learned by cross-entropy on the same gold labels (L_sup's head on the cosine,
and the label word through the LM, ``components.losses.sup_loss``), so they share a scale and their weighted sum
is a product of the two experts. ``w`` in [0, 1] is chosen on dev as the best of a grid for the run's dev measure
(AP by default); w = 1 is the cosine reading alone, w = 0 the joint reading alone. Ties go to the larger w: the
cosine reading is the cheap one, and the only one the ONNX export serves.

The mix needs both readings of every pair, so it suits scoring a pair set or re-ranking a cosine shortlist (the
cascade, ``components.student.cascade``), not encoding a corpus once.

Example:
    >>> import numpy as np
    >>> cosine, joint, labels = np.array([0.9, 0.1, 0.5]), np.array([0.4, 0.3, 0.9]), np.array([1, 0, 1])
    >>> mix = ReadingMix.fit(cosine, joint, labels, measure=lambda s, y: float(np.mean(s[y == 1]) - np.mean(s[y == 0])),
    ...                      scale=10.0, bias=-5.0)
    >>> 0.0 <= mix.weight <= 1.0
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

WEIGHT_GRID = tuple(i / 10 for i in range(11))
_EPS = 1e-7  # P(yes) comes from float32 softmax: clip before the log-odds


def joint_log_odds(joint: np.ndarray) -> np.ndarray:
    """log p(yes) - log p(no) from the joint reading's P(yes) renormalised over the two label words."""
    p = np.clip(np.asarray(joint, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class ReadingMix:
    """``weight`` of the cosine reading's log-odds (``scale * cos + bias``, L_sup's head) against the joint's."""

    weight: float = 1.0
    scale: float = 10.0
    bias: float = -5.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"the reading mix weight must be in [0, 1], got {self.weight}")

    def logit(self, cosine: np.ndarray, joint: np.ndarray) -> np.ndarray:
        cosine = np.asarray(cosine, dtype=np.float64)
        if cosine.shape != np.shape(joint):
            raise ValueError(f"cosine and joint readings differ in shape: {cosine.shape} vs {np.shape(joint)}")
        return self.weight * (self.scale * cosine + self.bias) + (1.0 - self.weight) * joint_log_odds(joint)

    def __call__(self, cosine: np.ndarray, joint: np.ndarray) -> np.ndarray:
        """P(match) of each pair, from its cosine and its joint P(yes)."""
        return 0.5 * (1.0 + np.tanh(0.5 * self.logit(cosine, joint)))

    @classmethod
    def fit(cls, cosine: np.ndarray, joint: np.ndarray, labels: np.ndarray,
            measure: Callable[[np.ndarray, np.ndarray], float], scale: float, bias: float,
            grid: tuple[float, ...] = WEIGHT_GRID) -> ReadingMix:
        """The grid weight whose mixed scores ``measure`` highest on these (dev) pairs; ties to the larger weight."""
        best: tuple[float, float] | None = None
        for weight in sorted(grid, reverse=True):
            mix = cls(float(weight), float(scale), float(bias))
            value = float(measure(mix(cosine, joint), np.asarray(labels)))
            value = value if np.isfinite(value) else -np.inf  # an undefined measure never wins
            if best is None or value > best[0]:
                best = (value, float(weight))
        if best is None:
            raise ValueError("the weight grid is empty")
        return cls(best[1], float(scale), float(bias))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)
