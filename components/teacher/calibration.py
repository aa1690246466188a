"""Platt scaling of the teacher cosine into a teacher score t = P(match) (METHOD.md, "Teacher signal").

Formula::

    t = P(match | cosine) = sigmoid(a * cosine + b)

``a`` and ``b`` come from a 1-D logistic regression of the label on the cosine over the training split,
fitted by Newton's method (IRLS) with step halving, in float64 numpy. Labels may be soft (in [0, 1]).

Platt's target smoothing (Platt 1999, on by default) replaces the targets 1 and 0 by
(N+ + 1) / (N+ + 2) and 1 / (N- + 2), with N+ = sum(labels), N- = sum(1 - labels); it keeps the fit finite on
separable data and its effect vanishes as N grows. A tiny ridge term on ``a`` (``l2``) keeps the Newton step
defined when every cosine is equal.

References:
    J. Platt, "Probabilistic outputs for support vector machines and comparisons to regularized likelihood
    methods", 1999.

Example:
    >>> import numpy as np
    >>> calibrator = PlattCalibrator.fit(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    >>> bool(calibrator(np.array([0.9]))[0] > 0.5)
    True
"""

from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CALIBRATION_KIND = "platt"


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for any z, exactly within [0, 1]


@dataclass
class PlattCalibrator:
    """P(match) = sigmoid(a * cosine + b). The default (a=1, b=0) is the identity-like untrained calibrator."""

    a: float = 1.0
    b: float = 0.0

    @classmethod
    def fit(cls, cosine: np.ndarray, labels: np.ndarray, *, smoothing: bool = True, l2: float = 1e-6,
            max_iter: int = 100, tol: float = 1e-10) -> PlattCalibrator:
        """Fit a and b by maximum likelihood (see the module docstring).

        Args:
            cosine: teacher cosines, any shape (flattened).
            labels: gold labels in [0, 1], same number of elements (soft labels allowed).
            smoothing: Platt's target smoothing.
            l2: ridge penalty on ``a`` (not on ``b``).
            max_iter, tol: Newton iterations and the stopping tolerance on the step size.
        """
        x = np.asarray(cosine, dtype=np.float64).ravel()
        y = np.asarray(labels, dtype=np.float64).ravel()
        if x.size == 0 or x.size != y.size:
            raise ValueError(f"cosine and labels must be non-empty and the same size, got {x.size} and {y.size}")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("cosine and labels must be finite")
        if y.min() < 0.0 or y.max() > 1.0:
            raise ValueError(f"labels must lie in [0, 1], got [{y.min()}, {y.max()}]")
        if smoothing:
            n_pos, n_neg = y.sum(), (1.0 - y).sum()
            y = y * (n_pos + 1.0) / (n_pos + 2.0) + (1.0 - y) / (n_neg + 2.0)

        def objective(w: np.ndarray) -> float:
            z = w[0] * x + w[1]
            # mean of log(1 + e^z) - y z, written stably
            return float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * w[0] ** 2)

        w = np.array([0.0, math.log((y.mean() + 1e-12) / (1.0 - y.mean() + 1e-12))])
        loss = objective(w)
        for _ in range(max_iter):
            p = _sigmoid(w[0] * x + w[1])
            residual, weight = p - y, np.maximum(p * (1.0 - p), 1e-12)
            grad = np.array([np.mean(residual * x) + l2 * w[0], np.mean(residual)])
            hess = np.array([[np.mean(weight * x * x) + l2, np.mean(weight * x)],
                             [np.mean(weight * x), np.mean(weight)]])
            try:
                step = np.linalg.solve(hess, grad)
            except np.linalg.LinAlgError:
                step = grad
            scale = 1.0
            while scale > 1e-8:  # step halving keeps every Newton step a descent step
                candidate = w - scale * step
                new_loss = objective(candidate)
                if new_loss <= loss + 1e-15:
                    break
                scale *= 0.5
            else:
                break
            w, loss = candidate, new_loss
            if np.abs(scale * step).max() < tol:
                break
        return cls(a=float(w[0]), b=float(w[1]))

    def __call__(self, cosine: np.ndarray | float) -> np.ndarray:
        """P(match) for cosines of any shape (a teacher score matrix included), float64 in [0, 1]."""
        return _sigmoid(self.a * np.asarray(cosine, dtype=np.float64) + self.b)

    def to_dict(self) -> dict[str, float | str]:
        return {"kind": CALIBRATION_KIND, "formula": "P(match) = sigmoid(a * cosine + b)", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> PlattCalibrator:
        if data.get("kind", CALIBRATION_KIND) != CALIBRATION_KIND:
            raise ValueError(f"not a Platt calibration: kind={data.get('kind')!r}")
        a, b = float(data["a"]), float(data["b"])
        if not (math.isfinite(a) and math.isfinite(b)):
            raise ValueError(f"calibration parameters must be finite, got a={a}, b={b}")
        return cls(a=a, b=b)

    def to_json(self, path: str | Path) -> Path:
        """Write ``{"kind", "formula", "a", "b"}`` to ``path`` atomically (temp file + ``os.replace``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with open(temp, "w", encoding="utf-8") as handle:
                json.dump(self.to_dict(), handle, indent=2)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> PlattCalibrator:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
