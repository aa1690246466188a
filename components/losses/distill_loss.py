"""Distillation loss L_dist: the student's similarities imitate the teacher's (METHOD.md, "Losses").

Over the kept entries E (the diagonal pairs the noise filter kept, and every off-diagonal pair):

    mse (default):  L_dist = mean_{(i,j) in E} ((S_ij + 1) / 2 - T_ij)^2
    kl (option):    L_dist = mean_i KL( softmax_E(T_i / tau_t) || softmax_E(S_i / tau) )
    prob (option):  L_dist = mean_{(i,j) in E} KL( Bern(T_ij) || Bern(sigmoid(head(S_ij))) )
    rank (option):  L_dist = log(1 + sum_{p, q in E, T_p > T_q} (T_p - T_q) exp((S_q - S_p) / tau))
    cosine (option): L_dist = mean_{(i,j) in E} (S_ij - C_ij)^2

where S is the student cosine matrix, T the teacher score matrix in [0, 1] and C the teacher's raw cosine
matrix (before Platt calibration); in ``kl`` mode each
row's softmax runs over that row's kept entries only. ``prob`` compares probabilities of a match: the
student's through a calibration ``head`` (L_sup's learned ``scale * s + bias``), the teacher's Platt-calibrated
one. Why it exists: in ``mse`` mode a pair the teacher calls unrelated (T near 0) asks for a cosine near -1,
which no more than two vectors can have with each other; on real data most in-batch pairs are such pairs, so
the term stays near 0.25 and pushes every off-diagonal cosine down at every step. Through the head, T near 0 asks
only for a low probability, which any cosine below the head's threshold gives. ``rank`` asks only for the
teacher's order: every kept entry the teacher scores higher should have the higher student cosine (CoSENT's form,
Su 2022, with the teacher's scores in place of gold labels), so no entry is asked for a particular cosine and the
hardest misordered entries carry the gradient; it is scale-free, as AP is. Each ordered couple counts by how far
apart the teacher puts it: unweighted, the couples of in-batch pairs the teacher calls equally unrelated (scores
0.01 against 0.02: most of the N^4 couples) outnumber the rest, their order is noise, and on STS-B the term rose
from 10.5 to 11.7 in the first 77 steps while the student spread its cosines. ``cosine`` asks for the teacher's own
cosines, the similarity form of embedding distillation: an unrelated pair's teacher cosine is near 0 (orthogonal,
which any number of vectors can be), so unlike ``mse`` every target is reachable at once and the term can reach 0.
Zero (not NaN) when nothing is kept, and when the kept entries have no order in ``rank`` (one entry, or all teacher
scores equal).

Args:
    mode: ``mse``, ``kl``, ``prob``, ``rank`` or ``cosine``.
    temperature: tau for the student logits in ``kl`` and ``rank`` modes (0.05, CoSENT's scale 20).
    teacher_temperature: tau_t for the teacher scores in ``kl`` mode (0.05).

Inputs:
    z_a, z_b: float [N, d]; teacher: float [N, N] in [0, 1]; keep: optional bool [N];
    head (``prob`` only): a callable mapping cosines to logits.
    teacher_cosine (``cosine`` only): float [N, N], the teacher's cosines in [-1, 1].

Example:
    >>> import torch
    >>> z = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    >>> DistillationLoss()(z, z, torch.ones(3, 3)) >= 0
    tensor(True)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from components.similarity import cosine_matrix

DISTILL_MODES = ("mse", "kl", "prob", "rank", "cosine")


def kept_entries(n: int, keep: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Bool [N, N]: every off-diagonal entry, and the diagonal entries the filter kept."""
    mask = ~torch.eye(n, dtype=torch.bool, device=device)
    if keep is None:
        return torch.ones(n, n, dtype=torch.bool, device=device)
    return mask | torch.diag(torch.as_tensor(keep, dtype=torch.bool, device=device))


class DistillationLoss(nn.Module):
    def __init__(self, mode: str = "mse", temperature: float = 0.05, teacher_temperature: float = 0.05) -> None:
        super().__init__()
        if mode not in DISTILL_MODES:
            raise ValueError(f"distill mode must be one of {DISTILL_MODES}, got {mode!r}")
        if temperature <= 0 or teacher_temperature <= 0:
            raise ValueError("distillation temperatures must be > 0")
        self.mode, self.temperature, self.teacher_temperature = mode, temperature, teacher_temperature

    def get_config_dict(self) -> dict[str, float | str]:
        return {"mode": self.mode, "temperature": self.temperature, "teacher_temperature": self.teacher_temperature}

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor, teacher: torch.Tensor,
                keep: torch.Tensor | None = None, head: Callable[[torch.Tensor], torch.Tensor] | None = None,
                teacher_cosine: torch.Tensor | None = None) -> torch.Tensor:
        return self.compute_loss_from_cosine(cosine_matrix(z_a, z_b), teacher, keep, head, teacher_cosine)

    def compute_loss_from_cosine(self, cosine: torch.Tensor, teacher: torch.Tensor,
                                 keep: torch.Tensor | None = None,
                                 head: Callable[[torch.Tensor], torch.Tensor] | None = None,
                                 teacher_cosine: torch.Tensor | None = None) -> torch.Tensor:
        if self.mode == "cosine" and teacher_cosine is None:
            raise ValueError("distill mode 'cosine' needs the teacher's raw cosine matrix (teacher_cosine)")
        teacher = teacher.to(cosine.dtype)
        entries = kept_entries(cosine.shape[0], keep, cosine.device)
        if not bool(entries.any()):
            warnings.warn("distillation loss: every pair was filtered out; the loss is 0", RuntimeWarning,
                          stacklevel=2)
            return cosine.sum() * 0.0
        if self.mode == "mse":
            return (((cosine + 1.0) / 2.0 - teacher)[entries] ** 2).mean()
        if self.mode == "cosine":
            return ((cosine - teacher_cosine.to(cosine.dtype))[entries] ** 2).mean()
        if self.mode == "prob":
            if head is None:
                raise ValueError("distill mode 'prob' needs the calibration head (L_sup's scale and bias)")
            logits, target = head(cosine[entries]), teacher[entries].clamp(0.0, 1.0)
            entropy = F.binary_cross_entropy(target, target, reduction="none")  # H(T): KL = BCE - H(T)
            return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") - entropy).mean()
        if self.mode == "rank":
            student, target = cosine[entries], teacher[entries]
            # [p, q] = (S_q - S_p) / tau wherever the teacher puts p above q
            gaps = (student[None, :] - student[:, None]) / self.temperature
            apart = target[:, None] - target[None, :]
            ordered = gaps[apart > 0] + apart[apart > 0].log()
            return torch.logsumexp(torch.cat([ordered.new_zeros(1), ordered]), dim=0)
        rows = entries.any(dim=1)
        student_logp = torch.log_softmax(cosine.masked_fill(~entries, -torch.inf) / self.temperature, dim=1)
        teacher_logp = torch.log_softmax(teacher.masked_fill(~entries, -torch.inf) / self.teacher_temperature, dim=1)
        terms = torch.where(entries, teacher_logp.exp() * (teacher_logp - student_logp), torch.zeros_like(cosine))
        return terms.sum(dim=1)[rows].mean()
