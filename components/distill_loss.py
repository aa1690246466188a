"""Distillation loss L_dist: the student's similarities imitate the teacher's (METHOD.md, "Losses").

Over the kept entries E (the diagonal pairs the noise filter kept, and every off-diagonal pair):

    mse (default):  L_dist = mean_{(i,j) in E} ((S_ij + 1) / 2 - T_ij)^2
    kl (option):    L_dist = mean_i KL( softmax_E(T_i / tau_t) || softmax_E(S_i / tau) )

where S is the student cosine matrix and T the teacher score matrix in [0, 1]; in ``kl`` mode each
row's softmax runs over that row's kept entries only. Zero (not NaN) when nothing is kept.

Args:
    mode: ``mse`` or ``kl``.
    temperature: tau for the student logits in ``kl`` mode (0.05).
    teacher_temperature: tau_t for the teacher scores in ``kl`` mode (0.05).

Inputs:
    z_a, z_b: float [N, d]; teacher: float [N, N] in [0, 1]; keep: optional bool [N].

Example:
    >>> import torch
    >>> z = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    >>> DistillationLoss()(z, z, torch.ones(3, 3)) >= 0
    tensor(True)
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from components.similarity import cosine_matrix

DISTILL_MODES = ("mse", "kl")


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
                keep: torch.Tensor | None = None) -> torch.Tensor:
        return self.compute_loss_from_cosine(cosine_matrix(z_a, z_b), teacher, keep)

    def compute_loss_from_cosine(self, cosine: torch.Tensor, teacher: torch.Tensor,
                                 keep: torch.Tensor | None = None) -> torch.Tensor:
        teacher = teacher.to(cosine.dtype)
        entries = kept_entries(cosine.shape[0], keep, cosine.device)
        if not bool(entries.any()):
            warnings.warn("distillation loss: every pair was filtered out; the loss is 0", RuntimeWarning,
                          stacklevel=2)
            return cosine.sum() * 0.0
        if self.mode == "mse":
            return (((cosine + 1.0) / 2.0 - teacher)[entries] ** 2).mean()
        rows = entries.any(dim=1)
        student_logp = torch.log_softmax(cosine.masked_fill(~entries, -torch.inf) / self.temperature, dim=1)
        teacher_logp = torch.log_softmax(teacher.masked_fill(~entries, -torch.inf) / self.teacher_temperature, dim=1)
        terms = torch.where(entries, teacher_logp.exp() * (teacher_logp - student_logp), torch.zeros_like(cosine))
        return terms.sum(dim=1)[rows].mean()
