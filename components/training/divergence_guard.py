"""Warnings when training starts to diverge or the representation collapses, named by step.

A composite of three losses can look fine on average and still blow up mid-run: a loss part or the gradient norm
climbs to several times its earlier level, and the student's cosines all drift towards 1 (every pair "matches").
:class:`DivergenceGuard` watches each series a training step reports (``loss/<part>``, ``grad_norm``): a series
jumps when its recent level (the median of its last ``span`` values) exceeds ``factor`` times its reference level
(the median of the ``window`` values before those), the absolute ``floor``, and ``start_share`` of its median
over the first ``warmup`` steps (a loss that has fallen close to 0 triples on noise alone; that is not a
divergence). Medians, not means: L_MCL at temperature 0.05 is heavy-tailed per batch (on real data most batches
score near 0.01 and one in ten scores 1-4, from a hard negative), and one hard batch is not a divergence, while
most of ``span`` batches well above the earlier level is. It warns once per jump, and again only after the series
came back below the line. :func:`collapse`
checks scores after an evaluation: every score near 1, all scores nearly equal, or a decision threshold at an
extreme of the scores (so every pair, or none, is a match).

The defaults were set on real runs (docs/defaults.md): a diverging composite's L_MCL rose from 0.6 to 3.9 within
30 steps (averages of 12 steps), and on 1,600 real pairs the old settings' runs held L_MCL at 4x its earlier level
for a dozen steps mid-run, while the per-step spikes of stable runs pass.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

WATCHED_PREFIXES = ("loss/", "grad_norm")


@dataclass
class _Series:
    history: deque = field(default_factory=deque)  # the last window + span values, oldest first
    start: list = field(default_factory=list)  # the values of the first warmup steps
    jumping: bool = False


class DivergenceGuard:
    """Feed every step's metrics to :meth:`observe`; it returns the warnings of that step.

    Args:
        factor: a series warns when its recent level exceeds ``factor`` times its reference level.
        span: steps whose median is the recent level.
        window: steps before those whose median is the reference level.
        floor: absolute level below which nothing warns (a tiny loss doubling is not a divergence).
        start_share: nothing warns below this share of the series' median over the first ``warmup`` steps.
        warmup: steps before the first check (early steps are noisy and the reference not yet set).

    Attributes:
        warnings: every warning so far, as (step, message).
    """

    def __init__(self, factor: float = 3.0, span: int = 9, window: int = 50, floor: float = 0.05,
                 start_share: float = 0.25, warmup: int = 20) -> None:
        if factor <= 1 or span < 1 or window < 1 or warmup < 0 or start_share < 0:
            raise ValueError("factor must be > 1, span and window >= 1, warmup and start_share >= 0")
        self.factor, self.span, self.window, self.floor, self.warmup = factor, span, window, floor, warmup
        self.start_share = start_share
        self._series: dict[str, _Series] = {}
        self.warnings: list[tuple[int, str]] = []

    def settings(self) -> dict[str, float]:
        """What decides a warning: benchmarks key stored runs by it, so a changed guard re-judges them."""
        return {"factor": self.factor, "span": self.span, "window": self.window, "floor": self.floor,
                "start_share": self.start_share, "warmup": self.warmup}

    def observe(self, step: int, metrics: dict[str, float]) -> list[str]:
        said = []
        for name, value in metrics.items():
            if not name.startswith(WATCHED_PREFIXES) or name == "loss/total" or not math.isfinite(value):
                continue
            series = self._series.setdefault(name, _Series(history=deque(maxlen=self.window + self.span)))
            series.history.append(value)
            if step <= self.warmup:
                series.start.append(value)
            if len(series.history) <= self.span or step <= self.warmup:
                continue
            values = list(series.history)
            recent, reference = float(np.median(values[-self.span:])), float(np.median(values[: -self.span]))
            start = self.start_share * float(np.median(series.start)) if series.start else 0.0
            line = max(self.factor * reference, self.floor, start)
            if recent > line and not series.jumping:
                series.jumping = True
                said.append(f"step {step}: {name} jumped to {recent:.3g} (median of the last {self.span} steps), "
                            f"{recent / max(reference, 1e-12):.1f}x its level of {reference:.3g}: the run may be "
                            "diverging (see docs/defaults.md, stable training)")
            elif recent <= line:
                series.jumping = False
        self.warnings += [(step, message) for message in said]
        return said


def collapse(scores: np.ndarray, threshold: float | None = None, near_one: float = 0.98,
             spread: float = 1e-3) -> str | None:
    """Why the scores look collapsed, or None: every score >= ``near_one`` (5th percentile), a spread (std)
    below ``spread``, or ``threshold`` at or beyond the lowest or highest score."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return None
    low, high = float(scores.min()), float(scores.max())
    if float(np.percentile(scores, 5)) >= near_one:
        return f"95% of the scores are >= {float(np.percentile(scores, 5)):.3f}: every pair looks alike"
    if float(scores.std()) < spread:
        return f"the scores hardly vary (std {float(scores.std()):.2g})"
    if threshold is not None and (threshold <= low or threshold >= high):
        side = "every pair a match" if threshold <= low else "no pair a match"
        return f"the decision threshold {threshold:.3f} lies at the edge of the scores [{low:.3f}, {high:.3f}] " \
               f"({side})"
    return None
