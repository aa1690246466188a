"""The student cosine matrix S and its angle theta (METHOD.md, "Losses").

Written once so that every loss reads the same S_ij = cos(z_a_i, z_b_j) and the same clamped
theta = arccos(clamp(S, -1 + 1e-7, 1 - 1e-7)), whose gradient stays finite.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ANGLE_EPS = 1e-7


def cosine_matrix(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """S [N, N] with S_ij = cos(z_a_i, z_b_j); inputs need not be normalised."""
    return F.normalize(z_a, dim=-1) @ F.normalize(z_b, dim=-1).T


def angle(cosine: torch.Tensor) -> torch.Tensor:
    """theta = arccos of the cosine clamped away from +-1."""
    return torch.arccos(cosine.clamp(-1.0 + ANGLE_EPS, 1.0 - ANGLE_EPS))
