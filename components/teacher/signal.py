"""The teacher's signal for a data set: embeddings, Platt-calibrated scores, and the noise-filter verdict.

METHOD.md, "Teacher signal and the dual-threshold noise filter": t = Platt(teacher cosine), fitted on
the training split only; every split is scored with that one calibration. Embeddings come from the
teacher scorer's persistent cache, so a second run on the same data encodes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.teacher.calibration import PlattCalibrator
from components.teacher.scorer import TeacherScorer


@dataclass
class SplitSignal:
    emb_a: np.ndarray
    emb_b: np.ndarray

    @property
    def cosine(self) -> np.ndarray:
        return np.einsum("nd,nd->n", self.emb_a, self.emb_b)


@dataclass
class TeacherSignal:
    splits: dict[str, SplitSignal]
    calibrator: PlattCalibrator

    def scores(self, split: str) -> np.ndarray:
        """Calibrated teacher scores t in [0, 1] of the split's pairs."""
        return np.asarray(self.calibrator(self.splits[split].cosine), dtype=np.float64)


def compute_teacher_signal(scorer: TeacherScorer, splits: dict[str, pd.DataFrame],
                           fit_on: str = "train") -> TeacherSignal:
    """Encode every text of every split once (cached), fit Platt scaling on ``fit_on``."""
    texts = list(dict.fromkeys(t for frame in splits.values() for col in ("text_a", "text_b") for t in frame[col]))
    vectors = scorer.encode(texts)
    index = {t: i for i, t in enumerate(texts)}
    out = {name: SplitSignal(vectors[[index[t] for t in frame["text_a"]]], vectors[[index[t] for t in frame["text_b"]]])
           for name, frame in splits.items()}
    calibrator = PlattCalibrator.fit(out[fit_on].cosine, splits[fit_on]["label"].to_numpy(dtype=np.float64))
    return TeacherSignal(out, calibrator)
