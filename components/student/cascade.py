"""Retrieval cascade (METHOD.md, "Inference"): a cheap cosine shortlist, then joint scoring decides.

For each query, the FAQ entries are ranked by s = cos(z_query, z_faq) with the A-encoder (the FAQ set is
encoded once); the ``top_k`` best are then read jointly with the query through the decoder path,
P("yes" | pair prompt), and re-ranked by it. The joint pass costs ``top_k`` LLM forwards per query instead
of one per FAQ entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from components.student.lora_encoder import LoraEncoder


@dataclass
class Hit:
    index: int
    cosine: float
    joint: float


def cascade_search(encoder: LoraEncoder, queries: Sequence[str], faq: Sequence[str], top_k: int = 5,
                   faq_vectors: torch.Tensor | None = None) -> list[list[Hit]]:
    """Per query, the cosine top-k FAQ entries re-ranked by joint P(yes), best first."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    faq_vectors = encoder.encode(list(faq)) if faq_vectors is None else faq_vectors
    cosine = encoder.encode(list(queries)) @ faq_vectors.T
    k = min(top_k, len(faq))
    top = cosine.topk(k, dim=1)
    pairs_a = [q for q in queries for _ in range(k)]
    pairs_b = [faq[int(j)] for row in top.indices for j in row]
    joint = encoder.joint_scores(pairs_a, pairs_b).view(len(queries), k)
    results = []
    for qi in range(len(queries)):
        hits = [Hit(int(top.indices[qi, j]), float(top.values[qi, j]), float(joint[qi, j])) for j in range(k)]
        results.append(sorted(hits, key=lambda h: -h.joint))
    return results
