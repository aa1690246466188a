"""The composite objective L = w_sup L_sup + w_dist L_dist + w_mcl L_MCL (METHOD.md, "Losses").

Computes the student cosine matrix S once and hands it to each part; returns the total and every part
as a dict (``total``, ``sup``, ``dist``, ``mcl``) so pipelines log each as ``loss/<part>``. A part is
switched off (for ablations) by leaving it out of ``parts``; it is then neither computed nor logged.
The noise filter's keep mask reaches only the teacher-driven parts (L_dist, L_MCL): filter scope
``all`` is applied earlier, by removing the pairs from the training data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from components.losses.distill_loss import DistillationLoss
from components.losses.mcl_loss import MarginAwareContrastiveLoss
from components.losses.sup_loss import SupervisedLoss
from components.similarity import cosine_matrix

LOSS_PARTS = ("sup", "dist", "mcl")


@dataclass
class LossConfig:
    """Every weight, margin, temperature and threshold of METHOD.md, named as there."""

    w_sup: float = 1.0
    w_dist: float = 1.0
    w_mcl: float = 1.0
    parts: tuple[str, ...] = LOSS_PARTS
    sup_mode: str = "representation"
    distill_mode: str = "mse"
    distill_temperature: float = 0.05
    distill_teacher_temperature: float = 0.05
    margin: float = 0.06
    # OURS: METHOD.md's tau 0.05 let L_MCL climb 3-10x mid-run at real size (docs/defaults.md, stable training)
    temperature: float = 0.1
    margin_rule: str = "aware"
    delta_pos: float = 0.5
    delta_neg: float = 0.5

    def __post_init__(self) -> None:
        self.parts = tuple(self.parts)
        unknown = set(self.parts) - set(LOSS_PARTS)
        if unknown or not self.parts:
            raise ValueError(f"loss parts must be a non-empty subset of {LOSS_PARTS}, got {self.parts}")
        for name in ("w_sup", "w_dist", "w_mcl"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("delta_pos", "delta_neg"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["parts"] = ",".join(self.parts)
        return out


class FlipKDLoss(nn.Module):
    """Weighted sum of the enabled parts; ``forward`` returns {"total", <part>: value}."""

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or LossConfig()
        self.sup = SupervisedLoss(cfg.sup_mode)
        self.dist = DistillationLoss(cfg.distill_mode, cfg.distill_temperature, cfg.distill_teacher_temperature)
        self.mcl = MarginAwareContrastiveLoss(cfg.margin, cfg.temperature, cfg.delta_neg, cfg.margin_rule)
        self.weights = {"sup": cfg.w_sup, "dist": cfg.w_dist, "mcl": cfg.w_mcl}

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                keep: torch.Tensor | None = None, label_logprobs: torch.Tensor | None = None,
                labelled: torch.Tensor | None = None, teacher_weight: float = 1.0,
                teacher_cosine: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``labelled`` marks the rows with a gold label (default all); only those reach L_sup, and
        ``label_logprobs`` holds one row per labelled pair. ``teacher_weight`` scales w_dist and w_mcl (a warm-up
        ramp); the parts are returned unscaled. ``teacher_cosine`` (the teacher's raw cosines) feeds L_dist's
        ``cosine`` form only."""
        cosine = cosine_matrix(z_a.float(), z_b.float())
        teacher = teacher.to(cosine.dtype)
        labels = torch.as_tensor(labels, dtype=cosine.dtype)
        parts: dict[str, torch.Tensor] = {}
        if "sup" in self.config.parts:
            gold = torch.ones_like(labels, dtype=torch.bool) if labelled is None else labelled.to(cosine.device)
            if bool(gold.any()):
                parts["sup"] = self.sup(labels[gold], cosine=cosine.diagonal()[gold], label_logprobs=label_logprobs)
            else:
                parts["sup"] = cosine.sum() * 0.0
        if "dist" in self.config.parts:
            parts["dist"] = self.dist.compute_loss_from_cosine(cosine, teacher, keep, self.sup.head, teacher_cosine)
        if "mcl" in self.config.parts:
            parts["mcl"] = self.mcl.compute_loss_from_cosine(cosine, teacher, labels, keep)
        total = sum(self.weights[name] * (1.0 if name == "sup" else teacher_weight) * value
                    for name, value in parts.items())
        return {"total": total, **parts}
