"""Pairwise distances between embeddings."""

from __future__ import annotations

import torch


def pairwise_euclidean(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean distance matrix, with a gradient that stays finite at zero distance."""
    y = x if y is None else y
    sq = (x * x).sum(1, keepdim=True) + (y * y).sum(1).unsqueeze(0) - 2.0 * x @ y.T
    sq = sq.clamp_min(0.0)
    zero = sq <= 1e-12
    if y is x:  # self-distances are exactly zero, whatever the rounding of the expansion
        zero = zero | torch.eye(len(x), dtype=torch.bool, device=x.device)
    dist = torch.sqrt(sq.masked_fill(zero, 1.0))
    return dist.masked_fill(zero, 0.0)


def pair_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise euclidean distance between two embedding batches."""
    return torch.linalg.vector_norm(a - b, dim=1)
