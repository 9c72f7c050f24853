"""Contrastive and triplet losses over mined index tuples."""

from __future__ import annotations

import torch

from siamese.losses.distances import pairwise_euclidean
from siamese.losses.miners import PAIR_MINERS, TRIPLET_MINERS


def contrastive_pair_loss(dist: torch.Tensor, same: torch.Tensor, margin: float) -> torch.Tensor:
    """Hadsell et al. 2006: pull positives to 0, push negatives beyond the margin (squared)."""
    same = same.to(dist.dtype)
    return (same * dist.pow(2) + (1 - same) * (margin - dist).clamp_min(0).pow(2)).mul(0.5).mean()


class MetricLoss(torch.nn.Module):
    """A loss over a labelled batch of embeddings: mine tuples, then average their losses."""

    def __init__(self, loss: str, miner: str, margin: float):
        super().__init__()
        self.loss, self.miner_name, self.margin = loss, miner, margin
        if loss == "contrastive":
            self.miner = PAIR_MINERS[miner]
        elif loss == "triplet":
            self.miner = TRIPLET_MINERS[miner]
        else:
            raise ValueError(f"unknown loss {loss!r}")

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        dist = pairwise_euclidean(emb)
        zero = emb.sum() * 0.0  # keeps the graph connected when nothing is mined
        if self.loss == "contrastive":
            (pi, pj), (ni, nj) = self.miner(dist, labels, self.margin)
            parts = []
            if len(pi):
                parts.append(dist[pi, pj].pow(2))
            if len(ni):
                parts.append((self.margin - dist[ni, nj]).clamp_min(0).pow(2))
            loss = 0.5 * torch.cat(parts).mean() if parts else zero
            return loss, {"mined_pos": len(pi), "mined_neg": len(ni)}
        a, p, n = self.miner(dist, labels, self.margin)
        if len(a) == 0:
            return zero, {"mined_triplets": 0}
        loss = (dist[a, p] - dist[a, n] + self.margin).clamp_min(0).mean()
        return loss, {"mined_triplets": len(a)}
