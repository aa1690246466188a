"""LoRA dropout: where the mask is applied and how it is drawn cheaply on CPU.

PEFT computes ``B A dropout(x)`` with ``nn.Dropout``, which draws one uniform float per element
(``bernoulli_``). On CPU that draw costs more than the module's own matmul: in a profiled training step of
SmolLM2-135M (bf16, 32 short texts) ``bernoulli_`` was 21% of the step time. :class:`FastDropout` draws
the same inverted-dropout mask from 16-bit slices of 64-bit random integers, four elements per draw,
so the rate is rounded to a multiple of 1/65536 (0.05 -> 0.0500030...) and otherwise the distribution
is that of ``nn.Dropout``: each element kept independently, kept ones scaled by 1 / (1 - p).

Two sites (``EncoderConfig.dropout_site``):
- ``"input"``: PEFT's place, a mask as wide as each module's input (576 to 1536 for SmolLM2);
- ``"bottleneck"``: ``B dropout(A x)``, a rank-wide mask (fewer draws again).

Masks that do not depend on the layout (:func:`masks_by_token`): the same texts can be laid out padded to
the longest text, padded to the maximum length (the trainer's ``--naive`` loop) or packed several to a row
(:mod:`components.student.packing`). Drawn per tensor element, the masks of a real token would differ between those
layouts, so the layouts would train different models from the same seed. Inside :func:`masks_by_token` each
mask is drawn per real token (one row per token, in the padded batch's order) and gathered into the layout,
so every layout gives every real token the same masks; padding positions get some token's mask (their
outputs are never read). The masks of one forward come from a private generator seeded by one draw of
torch's global generator, so extra LoRA modules run after the representation (a full-depth forward) do not
shift later steps' masks.

Saved adapters are unchanged (the rate stays in ``adapter_config.json``); in eval mode both are the identity.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

DROPOUT_SITES = ("input", "bottleneck")
_LEVELS = 1 << 16


@dataclass(frozen=True)
class _TokenOrder:
    index: torch.Tensor  # [rows * length]: the real token at each position of the layout
    shape: torch.Size  # (rows, length) of the layout
    tokens: int  # real tokens of the batch
    generator: torch.Generator


_ORDER: contextvars.ContextVar[_TokenOrder | None] = contextvars.ContextVar("lora_dropout_order", default=None)


@contextlib.contextmanager
def masks_by_token(token_index: torch.Tensor, tokens: int) -> Iterator[None]:
    """Within: dropout masks of ``[rows, length, d]`` inputs are drawn per real token (module docstring).

    ``token_index`` [rows, length] holds, at each position of the layout, the number of its real token in
    the padded batch's row-major order (0 .. ``tokens`` - 1; any value at padding).
    """
    if token_index.dim() != 2:
        raise ValueError(f"token_index must be [rows, length], got shape {tuple(token_index.shape)}")
    index = token_index.reshape(-1).long()
    if tokens < 1 or (index.numel() and (int(index.min()) < 0 or int(index.max()) >= tokens)):
        raise ValueError(f"token_index must lie in [0, {tokens}) with at least one token")
    seed = int(torch.randint(0, 2**62, (1,)))
    order = _TokenOrder(index, token_index.shape, tokens, torch.Generator().manual_seed(seed))
    reset = _ORDER.set(order)
    try:
        yield
    finally:
        _ORDER.reset(reset)


def keep_mask(shape: torch.Size, p: float, dtype: torch.dtype,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """0 / (1 / (1 - p)) mask of ``shape``: every element kept with probability 1 - p, independently."""
    n = int(torch.Size(shape).numel())
    cut = round(p * _LEVELS)
    draws = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, generator=generator)
    slices = draws.view(torch.int16)[:n].view(shape)  # uniform on [-32768, 32767]
    keep = slices >= cut - _LEVELS // 2
    return keep.to(dtype) * (_LEVELS / (_LEVELS - cut))


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Functional form of :class:`FastDropout`."""
    if not training or p == 0:
        return x
    if not 0 <= p < 1:
        raise ValueError(f"dropout rate must be in [0, 1), got {p}")
    order = _ORDER.get()
    if order is None or x.shape[:-1] != order.shape:
        return x * keep_mask(x.shape, p, x.dtype)
    per_token = keep_mask(torch.Size((order.tokens, x.shape[-1])), p, x.dtype, order.generator)
    return x * per_token.index_select(0, order.index).view(x.shape)


class FastDropout(nn.Module):
    """Inverted dropout like ``nn.Dropout(p)``, with a mask 3-4x cheaper to draw on CPU (module docstring)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def install_lora_dropout(model: nn.Module, site: str = "input", adapter: str = "default") -> int:
    """Replace each LoRA module's ``nn.Dropout`` by :class:`FastDropout` at ``site``; returns how many."""
    if site not in DROPOUT_SITES:
        raise ValueError(f"dropout site must be one of {DROPOUT_SITES}, got {site!r}")
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict) or adapter not in dropouts:
            continue
        drop = dropouts[adapter]
        if not isinstance(drop, nn.Dropout) or drop.p == 0:
            continue
        if site == "input":
            dropouts[adapter] = FastDropout(drop.p)
        else:
            dropouts[adapter] = nn.Identity()
            module.lora_A[adapter].register_forward_hook(
                lambda m, i, out, p=drop.p: fast_dropout(out, p, m.training))
        replaced += 1
    return replaced
