"""Sequence packing: several short texts share one row, so a training forward computes almost no padding.

A batch of 2N texts padded to its longest text wastes a quarter of the tokens on the demo data (texts of
a pair differ in length, and bucketing can only sort pairs). :func:`pack` lays the real tokens of the batch
into ``ceil(total / capacity)`` rows, longest text first into the least-filled row, so rows end up nearly
equally long; a block-diagonal causal additive mask keeps every text attending only to its own earlier
tokens, and position ids restart at 0 for each text. The model's outputs at the real tokens equal those of
the padded batch (attention sets and positions are the same); :meth:`Packed.unpack` puts them back in the
padded layout so pooling stays :mod:`components.pooling`.

``capacity`` bounds the row length (attention cost per token grows with it); a text longer than
``capacity`` gets a row of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Packed:
    """Packed model inputs and the map back to the padded batch."""

    input_ids: torch.Tensor  # [R, W]
    position_ids: torch.Tensor  # [R, W]
    attention_bias: torch.Tensor  # [R, 1, W, W], additive: 0 where allowed, dtype min elsewhere
    rows: torch.Tensor  # [T] packed row of each real token, in the padded batch's row-major order
    cols: torch.Tensor  # [T] packed column of each real token
    attention_mask: torch.Tensor  # [N, L], the padded batch's mask

    def unpack(self, packed_out: torch.Tensor) -> torch.Tensor:
        """[R, W, ...] outputs -> [N, L, ...] in the padded layout (zeros at padding)."""
        n, length = self.attention_mask.shape
        out = packed_out.new_zeros((n, length, *packed_out.shape[2:]))
        out[self.attention_mask.bool()] = packed_out[self.rows, self.cols]
        return out

    def token_index(self) -> torch.Tensor:
        """[R, W]: at each packed position, the number of its real token in the padded batch (0 at padding)."""
        index = torch.zeros(self.input_ids.shape, dtype=torch.long)
        index[self.rows, self.cols] = torch.arange(len(self.rows))
        return index


def padded_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[N, L]: at each padded position, the number of its real token in row-major order (0 at padding)."""
    flat = attention_mask.reshape(-1).long()
    return (flat.cumsum(0) - 1).clamp_min(0).view(attention_mask.shape)


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor, capacity: int = 256,
         dtype: torch.dtype = torch.float32, pad_token_id: int = 0) -> Packed:
    """Pack a padded batch (left or right padding) into rows of about ``capacity`` tokens."""
    real = attention_mask.bool()
    lengths = [int(v) for v in real.sum(1)]
    if min(lengths, default=0) < 1:
        raise ValueError("every text needs at least one real token to be packed")
    # never more rows than texts: a text longer than ``capacity`` fills a row of its own, and an empty row is waste
    n_rows = max(1, min(len(lengths), math.ceil(sum(lengths) / capacity)))
    load = [0] * n_rows
    place: list[tuple[int, int]] = [(0, 0)] * len(lengths)  # (row, start column) of each text
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        row = min(range(n_rows), key=lambda r: load[r])
        place[i] = (row, load[row])
        load[row] += lengths[i]
    width = max(load)
    ids = torch.full((n_rows, width), pad_token_id, dtype=input_ids.dtype)
    positions = torch.zeros((n_rows, width), dtype=torch.long)
    segment = torch.full((n_rows, width), -1, dtype=torch.long)
    rows, cols = [], []
    for i, (row, start) in enumerate(place):
        span = slice(start, start + lengths[i])
        ids[row, span] = input_ids[i][real[i]]
        positions[row, span] = torch.arange(lengths[i])
        segment[row, span] = i
        rows.append(torch.full((lengths[i],), row, dtype=torch.long))
        cols.append(torch.arange(start, start + lengths[i]))
    same = segment.unsqueeze(2) == segment.unsqueeze(1)  # [R, W, W]: query i, key j
    causal = positions.unsqueeze(1) <= positions.unsqueeze(2)
    idx = torch.arange(width)
    allowed = (same & causal) | (idx.view(1, width) == idx.view(width, 1)).unsqueeze(0)  # padding sees itself
    bias = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)
    return Packed(ids, positions, bias, torch.cat(rows), torch.cat(cols), attention_mask)
