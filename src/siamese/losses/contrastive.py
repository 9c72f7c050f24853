"""The contrastive loss (Hadsell et al. 2006) over mined or explicit pairs.

Reduction follows pytorch-metric-learning: the mean over positive pairs plus the mean over
negative pairs, so the far more numerous negatives cannot drown the positives. The same pair
loss scores explicit pairs (offline training pairs, and the validation pair loss of every model
trained on a fixed distance)."""

from __future__ import annotations

from typing import ClassVar

import torch

from siamese.distances import pairwise_distance
from siamese.losses import _fused
from siamese.losses.base import Loss, LossSettings, PairScorer, Stats
from siamese.mining.online import PairIndices

# train.contrastive_form: the config's allowed values
FORMS = ("squared", "linear")


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
    """Mean positive term + mean negative term over given pairs (offline pairs, validation).
    A side without pairs contributes 0; computed without host synchronisation."""
    same = same.to(torch.bool)
    terms = contrastive_terms(dist, same, margin, form)
    n_pos = same.sum()
    pos = torch.where(same, terms, 0.0).sum() / n_pos.clamp_min(1)
    neg = torch.where(same, 0.0, terms).sum() / (len(same) - n_pos).clamp_min(1)
    return pos + neg


def mined_pair_loss(
    dist: torch.Tensor, pairs: PairIndices, margin: float, form: str = "squared"
) -> torch.Tensor:
    """The contrastive loss of the pairs a pair miner returned over the distance matrix."""
    (pi, pj), (ni, nj) = pairs
    d = torch.cat([dist[pi, pj], dist[ni, nj]])
    same = torch.arange(len(d), device=dist.device) < len(pi)
    return contrastive_pair_loss(d, same, margin, form)


class ContrastiveLoss(Loss):
    """Contrastive loss over the pairs of a pair miner (hard_pairs: the negatives inside the
    margin; all_pairs: every negative) or over offline pairs."""

    name: ClassVar[str] = "contrastive"
    miners: ClassVar[tuple[str, ...]] = ("all_pairs", "hard_pairs", "offline_pairs")

    def __init__(
        self,
        miner: str = "hard_pairs",
        margin: float = 0.5,
        distance: str = "euclidean",
        contrastive_form: str = "squared",
    ):
        super().__init__(miner)
        if contrastive_form not in FORMS:
            raise ValueError(
                f"unknown contrastive form {contrastive_form!r}; allowed: {', '.join(FORMS)}"
            )
        self.margin, self.distance, self.form = margin, distance, contrastive_form

    @classmethod
    def from_params(cls, train: LossSettings) -> ContrastiveLoss:
        return cls(train.miner, train.margin, train.distance, train.contrastive_form)

    def _fused(self, emb: torch.Tensor, labels: torch.Tensor) -> _fused.Compute | None:
        if self.distance == "cosine" or emb.dtype not in _fused.DTYPES:
            return None
        all_negatives = self.miner_name == "all_pairs"
        return _fused.contrastive(labels, self.margin, self.distance, self.form, all_negatives)

    def reference(
        self, emb: torch.Tensor, labels: torch.Tensor, encoder: PairScorer | None = None
    ) -> tuple[torch.Tensor, Stats]:
        dist = pairwise_distance(emb, kind=self.distance)
        pairs = self.miner(dist, labels, self.margin)
        (pi, _), (ni, _) = pairs
        loss = emb.sum() * 0.0  # keeps the graph connected when nothing is mined
        loss = loss + mined_pair_loss(dist, pairs, self.margin, self.form)
        return loss, {"mined_pos": len(pi), "mined_neg": len(ni)}

    def explicit_pair_loss(
        self, encoder: PairScorer, a: torch.Tensor, b: torch.Tensor, same: torch.Tensor
    ) -> torch.Tensor:
        return contrastive_pair_loss(encoder.pair_distance(a, b), same, self.margin, self.form)
