"""CoSENT loss: a ranking loss on pair cosines, used to fine-tune the teacher (METHOD.md, "Roles").

Formula, over the pairs i, j of a batch whose labels differ::

    L = log(1 + sum_{(i, j): y_i > y_j} exp(scale * (cos_j - cos_i)))

Every pair with a higher label must get a higher cosine than every pair with a lower label; only the order
matters, so graded labels in [0, 1] work as they are.

Args:
    scale: multiplies the cosine differences (20, as sentence-transformers; the inverse of a temperature 0.05).

References:
    Su Jianlin, "CoSENT: A more efficient sentence vector scheme than Sentence-BERT", 2022
    (https://kexue.fm/archives/8847); sentence-transformers ``CoSENTLoss``.

Inputs:
    emb_a, emb_b: float [N, d] embeddings of the two texts of each pair (normalised inside);
    labels: float [N], any graded similarity (here gold labels in [0, 1]).

Relations:
    Same formula as sentence-transformers ``CoSENTLoss``. Compared with a cosine MSE it never asks for a
    particular cosine value, only for the ranking; AnglE uses the same ranking with an angle difference.

Example:
    >>> import torch
    >>> loss = CoSENTLoss()(torch.randn(4, 8), torch.randn(4, 8), torch.tensor([1.0, 0.0, 1.0, 0.0]))
    >>> bool(loss >= 0)
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CoSENTLoss(nn.Module):
    def __init__(self, scale: float = 20.0) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.scale = scale

    def get_config_dict(self) -> dict[str, float]:
        return {"scale": self.scale}

    def forward(self, emb_a: torch.Tensor, emb_b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = (F.normalize(emb_a, dim=-1) * F.normalize(emb_b, dim=-1)).sum(dim=-1)
        return self.compute_loss_from_cosine(cosine, labels)

    def compute_loss_from_cosine(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss from pair cosines [N] and labels [N]; 0 (with a gradient) when all labels are equal."""
        labels = torch.as_tensor(labels, device=cosine.device, dtype=cosine.dtype)
        scores = cosine * self.scale
        # diff[i, j] = s_i - s_j, kept where y_i < y_j (the lower-labelled pair scored minus the higher one)
        diff = scores[:, None] - scores[None, :]
        keep = labels[:, None] < labels[None, :]
        diff = diff.masked_fill(~keep, float("-inf"))
        zero = torch.zeros(1, device=cosine.device, dtype=cosine.dtype)
        return torch.logsumexp(torch.cat([zero, diff.flatten()]), dim=0)
