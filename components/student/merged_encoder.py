"""The merged encoder: the student's representation path with LoRA merged in and the model cut after the readout
block, for export (:meth:`LoraEncoder.merged_encoder <components.student.lora_encoder.LoraEncoder.merged_encoder>`
builds it). Plain torch modules only: no peft and no transformers mask helpers, so ONNX export traces it whole.
"""

from __future__ import annotations

import torch
from torch import nn

from components.pooling import pool_normalized


def _input_norm(layer: nn.Module, module: str) -> nn.Module:
    """The norm whose output feeds ``module`` in a pre-norm decoder block."""
    if module in ("q_proj", "k_proj", "v_proj") and hasattr(layer, "input_layernorm"):
        return layer.input_layernorm
    raise NotImplementedError(f"merged export supports attention input modules (q_proj, k_proj, v_proj) of "
                              f"pre-norm decoder blocks; got {module!r}")


def attention_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive [N, 1, L, L] mask: causal plus padding; every position may see itself (no empty rows)."""
    length = attention_mask.shape[1]
    idx = torch.arange(length, device=attention_mask.device)
    causal = idx.view(1, length) <= idx.view(length, 1)
    allowed = causal.unsqueeze(0) & attention_mask.bool().unsqueeze(1)
    # the diagonal by comparison, not torch.eye: a boolean EyeLike has no ONNX Runtime kernel
    allowed = allowed | (idx.view(1, length) == idx.view(length, 1)).unsqueeze(0)
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)


class MergedEncoder(nn.Module):
    """input_ids, attention_mask -> L2-normalised z; no peft, no transformers mask helpers (exportable)."""

    def __init__(self, embed_tokens: nn.Module, layers: nn.ModuleList, norm: nn.Module, head: nn.Linear,
                 rotary_emb: nn.Module, pooling: str) -> None:
        super().__init__()
        self.embed_tokens, self.layers, self.norm = embed_tokens, layers, norm
        self.head, self.rotary_emb = head, rotary_emb
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        bias = attention_bias(attention_mask, hidden.dtype)
        position_embeddings = self.rotary_emb(hidden, position_ids)
        for layer in self.layers:
            out = layer(hidden, attention_mask=bias, position_ids=position_ids,
                        position_embeddings=position_embeddings, use_cache=False)
            hidden = out[0] if isinstance(out, tuple) else out
        return pool_normalized(self.head(self.norm(hidden)), attention_mask, self.pooling)
