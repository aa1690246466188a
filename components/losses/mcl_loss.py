"""Margin-aware contrastive loss in angular space, L_MCL (METHOD.md, "Losses").

Formula, for anchors i (labelled positives the noise filter kept)::

    theta_ij = arccos(clamp(cos(z_a_i, z_b_j), -1 + 1e-7, 1 - 1e-7))
    psi_ii   = cos(min(theta_ii + m_c * t_ii, pi))              # confident positive: larger margin
    psi_ij   = cos(max(theta_ij - m_c * (1 - t_ij), 0))         # unrelated negative: pushed further
    L_MCL    = mean_i -log( e^{psi_ii/tau} / (e^{psi_ii/tau} + sum_{j in N(i)} e^{psi_ij/tau}) )

where N(i) = {j != i : t_ij <= delta_neg} (a higher t_ij is a probable false negative). The loss is
zero, not NaN, when no anchor is left (a warning says so).

Args:
    margin: m_c (PAPER: 0.06).
    temperature: tau, divides the logits (0.05).
    delta_neg: teacher score above which an in-batch pair is not used as a negative (0.5).
    margin_rule: ``aware`` (the flipkd loss above), ``fixed`` (ArcCSE-style baseline:
        psi_ii = cos(min(theta_ii + m, pi)), negatives unchanged) or ``none`` (plain InfoNCE on cosines).

References:
    Li et al., "Flipping Knowledge Distillation", ACL 2025 (arXiv 2507.05617);
    Zhang et al., "ArcCSE", ACL 2022 (the fixed angular margin baseline).

Inputs:
    z_a, z_b: float [N, d] representations of the two sides (normalised inside);
    teacher: float [N, N] in [0, 1], t_ij = teacher score of a_i against b_j;
    labels: [N] in {0, 1} (graded labels: >= 0.5 counts as a match);
    keep: optional bool [N] from :class:`components.teacher.noise_filter.DualThresholdFilter`.

Relations:
    The three margin rules share this one module; only the margin applied to theta changes.

Example:
    >>> import torch
    >>> z_a, z_b = torch.randn(4, 8), torch.randn(4, 8)
    >>> t = torch.full((4, 4), 0.1); t.fill_diagonal_(0.9)
    >>> loss = MarginAwareContrastiveLoss()(z_a, z_b, t, torch.tensor([1, 1, 0, 1]))
    >>> bool(loss >= 0)
    True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import nn

from components.similarity import angle, cosine_matrix
from components.teacher.noise_filter import false_negative_mask

MarginRule = Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]


def _aware(theta: torch.Tensor, teacher: torch.Tensor, m: float) -> tuple[torch.Tensor, torch.Tensor]:
    positive = torch.cos(torch.clamp(theta + m * teacher, max=math.pi))
    negative = torch.cos(torch.clamp(theta - m * (1.0 - teacher), min=0.0))
    return positive, negative


def _fixed(theta: torch.Tensor, teacher: torch.Tensor, m: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cos(torch.clamp(theta + m, max=math.pi)), torch.cos(theta)


def _none(theta: torch.Tensor, teacher: torch.Tensor, m: float) -> tuple[torch.Tensor, torch.Tensor]:
    cosine = torch.cos(theta)
    return cosine, cosine


MARGIN_RULES: dict[str, MarginRule] = {"aware": _aware, "fixed": _fixed, "none": _none}


class MarginAwareContrastiveLoss(nn.Module):
    def __init__(self, margin: float = 0.06, temperature: float = 0.05, delta_neg: float = 0.5,
                 margin_rule: str = "aware") -> None:
        super().__init__()
        if margin_rule not in MARGIN_RULES:
            raise ValueError(f"margin_rule must be one of {sorted(MARGIN_RULES)}, got {margin_rule!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin, self.temperature, self.delta_neg, self.margin_rule = margin, temperature, delta_neg, margin_rule

    def get_config_dict(self) -> dict[str, float | str]:
        return {"margin": self.margin, "temperature": self.temperature, "delta_neg": self.delta_neg,
                "margin_rule": self.margin_rule}

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        return self.compute_loss_from_cosine(cosine_matrix(z_a, z_b), teacher, labels, keep)

    def compute_loss_from_cosine(self, cosine: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                                 keep: torch.Tensor | None = None) -> torch.Tensor:
        """L_MCL from the student cosine matrix S [N, N] (see the module docstring)."""
        teacher = teacher.to(cosine.dtype)
        anchors = torch.as_tensor(labels, device=cosine.device) >= 0.5
        if keep is not None:
            anchors = anchors & torch.as_tensor(keep, dtype=torch.bool, device=cosine.device)
        if not bool(anchors.any()):
            warnings.warn("MCL loss: no anchor in this batch (no kept positive pair); the loss is 0",
                          RuntimeWarning, stacklevel=2)
            return cosine.sum() * 0.0
        positive, negative = MARGIN_RULES[self.margin_rule](angle(cosine), teacher, self.margin)
        logits = torch.where(false_negative_mask(teacher, self.delta_neg), negative, -math.inf)
        diagonal = torch.arange(cosine.shape[0], device=cosine.device)
        logits[diagonal, diagonal] = positive.diagonal()
        logits = logits / self.temperature
        per_row = torch.logsumexp(logits, dim=1) - logits.diagonal()
        return per_row[anchors].mean()
