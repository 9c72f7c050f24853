"""Contrastive and triplet losses over mined index tuples.

Reduction follows pytorch-metric-learning: the contrastive loss is the mean over mined positive
pairs plus the mean over mined negative pairs (so the far more numerous negatives cannot drown
the positives), and the triplet loss is the mean over mined triplets.
"""

from __future__ import annotations

import torch

from siamese.losses.distances import pairwise_distance
from siamese.losses.miners import PAIR_MINERS, TRIPLET_MINERS


def contrastive_terms(
    dist: torch.Tensor, same: torch.Tensor, margin: float, form: str = "squared"
) -> torch.Tensor:
    """Per-pair contrastive loss: Hadsell et al. 2006, ``(1-y)/2 d^2 + y/2 max(0, m-d)^2`` in
    the squared form (y = 1 for different identities), ``d`` / ``max(0, m-d)`` in the linear."""
    same = same.to(torch.bool)
    hinge = (margin - dist).clamp_min(0)
    if form == "squared":
        return torch.where(same, dist.pow(2), hinge.pow(2)) * 0.5
    return torch.where(same, dist, hinge)


def contrastive_pair_loss(
    dist: torch.Tensor, same: torch.Tensor, margin: float, form: str = "squared"
) -> torch.Tensor:
    """Mean positive term + mean negative term over given pairs (offline pairs, validation)."""
    same = same.to(torch.bool)
    terms = contrastive_terms(dist, same, margin, form)
    loss = dist.sum() * 0.0
    if same.any():
        loss = loss + terms[same].mean()
    if (~same).any():
        loss = loss + terms[~same].mean()
    return loss


def _log1p_sum_exp(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise log(1 + sum over mask of exp(x)), computed stably."""
    x = x.masked_fill(~mask, float("-inf"))
    zeros = torch.zeros(len(x), 1, dtype=x.dtype, device=x.device)
    return torch.logsumexp(torch.cat([zeros, x], dim=1), dim=1)


def multi_similarity_loss(
    emb: torch.Tensor, labels: torch.Tensor, alpha: float, beta: float, base: float
) -> torch.Tensor:
    """Wang et al. 2019 on cosine similarity: per anchor, a soft weighting of all positives and
    negatives relative to ``base``; averaged over anchors."""
    from siamese.losses.miners import label_masks

    x = torch.nn.functional.normalize(emb, dim=1)
    sim = x @ x.T
    pos, neg = label_masks(labels)
    pos_term = _log1p_sum_exp(-alpha * (sim - base), pos) / alpha
    neg_term = _log1p_sum_exp(beta * (sim - base), neg) / beta
    return (pos_term + neg_term).mean()


class MetricLoss(torch.nn.Module):
    """A loss over a labelled batch of embeddings: mine tuples, then reduce their losses."""

    def __init__(
        self,
        loss: str,
        miner: str,
        margin: float,
        distance: str = "euclidean",
        contrastive_form: str = "squared",
        soft_margin: bool = False,
        ms: tuple[float, float, float] = (2.0, 50.0, 0.5),
    ):
        super().__init__()
        self.loss, self.miner_name, self.margin = loss, miner, margin
        self.distance, self.form, self.soft = distance, contrastive_form, soft_margin
        self.ms = ms
        if loss == "multi_similarity":
            self.miner = None
        elif loss == "contrastive":
            self.miner = PAIR_MINERS[miner]
        elif loss == "triplet":
            self.miner = TRIPLET_MINERS[miner]
        else:
            raise ValueError(f"unknown loss {loss!r}")

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if self.loss == "multi_similarity":
            return multi_similarity_loss(emb, labels, *self.ms), {}
        dist = pairwise_distance(emb, kind=self.distance)
        loss = emb.sum() * 0.0  # keeps the graph connected when nothing is mined
        if self.loss == "contrastive":
            (pi, pj), (ni, nj) = self.miner(dist, labels, self.margin)
            d = torch.cat([dist[pi, pj], dist[ni, nj]])
            same = torch.arange(len(d), device=emb.device) < len(pi)
            loss = loss + contrastive_pair_loss(d, same, self.margin, self.form)
            return loss, {"mined_pos": len(pi), "mined_neg": len(ni)}
        a, p, n = self.miner(dist, labels, self.margin)
        if len(a) == 0:
            return loss, {"mined_triplets": 0}
        violation = dist[a, p] - dist[a, n] + self.margin
        per = torch.nn.functional.softplus(violation) if self.soft else violation.clamp_min(0)
        return loss + per.mean(), {"mined_triplets": len(a)}
