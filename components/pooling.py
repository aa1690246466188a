"""Sequence pooling written once, for torch training and the ONNX export alike.

METHOD.md, "The student as an encoder-decoder": the representation is pooled over the sequence by
the last non-padding token (default) or the mean over non-padding tokens, then L2-normalised, and
must give the same vector whatever side the tokenizer pads on. There is no Python branch on the
padding side: the last real position is ``max(mask * arange(L))``, which is right for both.
"""

from __future__ import annotations

import torch

POOLING_MODES = ("last", "mean")


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-padding position of each row, for left or right padding."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).amax(dim=1)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str = "last") -> torch.Tensor:
    """Pool ``hidden`` [N, L, d] over real tokens into [N, d] (not normalised)."""
    if mode == "last":
        index = last_token_index(attention_mask)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
    if mode == "mean":
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    raise ValueError(f"pooling must be one of {POOLING_MODES}, got {mode!r}")


def pool_normalized(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str = "last") -> torch.Tensor:
    """Pool then L2-normalise: the student representation z of METHOD.md."""
    return torch.nn.functional.normalize(pool(hidden, attention_mask, mode).float(), dim=-1)
