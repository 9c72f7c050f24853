"""Learned similarity heads: the "dense + sigmoid decision layer" of Koch et al. 2015.

Instead of a fixed distance, a head scores a pair of twin embeddings with
``p(same) = sigmoid(sum_j w_j |a_j - b_j| + b)``. The rest of the pipeline (calibration,
evaluation, serving) works on distances, so a head model reports ``1 - p(same)``: monotone in
the learned score, bounded in [0, 1], and computed as ``sigmoid(-logit)`` so it does not lose
precision when ``p`` is close to 1.
"""

from __future__ import annotations

import math

import torch
from torch import nn

HEADS = ("weighted_l1",)


class WeightedL1Head(nn.Module):
    """Koch et al.'s weighted L1 head. Initialised so that identical embeddings score p ~ 0.99
    and the pairs of a random L2-normalised embedding score p ~ 0.5: training starts with useful
    gradients for both positives and negatives instead of a saturated sigmoid."""

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.full((embedding_dim,), -4.0 / math.sqrt(embedding_dim)))
        self.bias = nn.Parameter(torch.tensor(4.5))

    def logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Row-wise logit of p(same identity); any float dtype (float64 for metrics)."""
        w = self.weight.to(a.dtype)
        return (a - b).abs() @ w + self.bias.to(a.dtype)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.logits(a, b)


def build_head(name: str | None, embedding_dim: int) -> nn.Module | None:
    if name is None:
        return None
    if name != "weighted_l1":
        raise ValueError(f"unknown head {name!r}; available: {', '.join(HEADS)}")
    return WeightedL1Head(embedding_dim)


def head_distance(logits: torch.Tensor) -> torch.Tensor:
    """``1 - sigmoid(logits)``, written so it keeps full precision for confident matches."""
    return torch.sigmoid(-logits)
