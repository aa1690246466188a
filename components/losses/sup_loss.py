"""Supervised loss on the gold labels, L_sup (METHOD.md, "Losses").

Three modes:

    representation (default):  L_sup = BCE( sigmoid(scale * s_ii + bias), y_i ),  s_ii = cos(z_a_i, z_b_i)
        with ``scale`` and ``bias`` learned scalars;
    generative:                L_sup = -[ y_i log p(yes | prompt_i) + (1 - y_i) log p(no | prompt_i) ]
        the cross-entropy of the label word after a fixed pair prompt, through the full LLM (the decoder path),
        with p the LM's full-vocabulary probabilities of the two label words;
    both (OURS):               L_sup = L_sup(representation) + L_sup(generative)
        one student trained to read a pair both ways: the cosine readout gets the gradient it gets in
        representation mode, and the decoder path the one it gets in generative mode. Two students trained
        one way each ranked STS-B pairs differently (Spearman 0.81, against 0.94 between two cosine seeds), so
        a mix of the two readings can rank better than either (``components.student.reading_mix``).

Graded labels are scaled to [0, 1] beforehand and used as soft targets y_i.

Inputs:
    representation: ``cosine`` [N, N] or [N] (the diagonal is used) and ``labels`` [N] in [0, 1];
    generative: ``label_logprobs`` [N, 2] = (log p(no), log p(yes)) and ``labels`` [N];
    both: ``cosine``, ``label_logprobs`` and ``labels``.

Example:
    >>> import torch
    >>> SupervisedLoss()(cosine=torch.tensor([0.9, -0.2]), labels=torch.tensor([1.0, 0.0])) > 0
    tensor(True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SUP_MODES = ("representation", "generative", "both")


class SupervisedLoss(nn.Module):
    def __init__(self, mode: str = "representation", scale_init: float = 10.0, bias_init: float = -5.0) -> None:
        super().__init__()
        if mode not in SUP_MODES:
            raise ValueError(f"sup mode must be one of {SUP_MODES}, got {mode!r}")
        self.mode = mode
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))
        self.bias = nn.Parameter(torch.tensor(float(bias_init)))

    def get_config_dict(self) -> dict[str, float | str]:
        scale, bias = self.calibration()
        return {"mode": self.mode, "scale": scale, "bias": bias}

    def calibration(self) -> tuple[float, float]:
        """The head's (scale, bias) as plain floats, e.g. for the reading mix (detached: no autograd warning)."""
        return float(self.scale.detach()), float(self.bias.detach())

    def head(self, cosine: torch.Tensor) -> torch.Tensor:
        """Logit of a match from a cosine: ``scale * s + bias`` (the calibration L_sup learns)."""
        return self.scale.to(cosine.dtype) * cosine + self.bias.to(cosine.dtype)

    def forward(self, labels: torch.Tensor, cosine: torch.Tensor | None = None,
                label_logprobs: torch.Tensor | None = None) -> torch.Tensor:
        labels = torch.as_tensor(labels)
        loss = None
        if self.mode in ("representation", "both"):
            if cosine is None:
                raise ValueError(f"{self.mode} mode needs the student cosine")
            pair_cosine = cosine.diagonal() if cosine.dim() == 2 else cosine
            logits = self.head(pair_cosine)
            loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        if self.mode in ("generative", "both"):
            if label_logprobs is None:
                raise ValueError(f"{self.mode} mode needs label_logprobs [N, 2] = (log p(no), log p(yes))")
            y = labels.to(label_logprobs.dtype)
            generative = -(y * label_logprobs[:, 1] + (1.0 - y) * label_logprobs[:, 0]).mean()
            loss = generative if loss is None else loss + generative.to(loss.dtype)
        return loss
