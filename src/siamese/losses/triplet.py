"""The triplet margin loss over mined (anchor, positive, negative) triplets.

Reduction follows pytorch-metric-learning: the mean over the mined triplets (hinge, or softplus
with ``soft_margin``)."""

from __future__ import annotations

from typing import ClassVar

import torch

from siamese.distances import pairwise_distance
from siamese.losses import _fused
from siamese.losses.base import Loss, LossSettings, PairScorer, Stats
from siamese.losses.contrastive import contrastive_pair_loss
from siamese.mining.online import TripletIndices


def mined_triplet_loss(
    dist: torch.Tensor, triplets: TripletIndices, margin: float, soft: bool = False
) -> torch.Tensor:
    """Mean of ``max(0, d_ap - d_an + margin)`` (softplus if ``soft``) over the triplets a
    triplet miner returned; at least one triplet."""
    a, p, n = triplets
    violation = dist[a, p] - dist[a, n] + margin
    per = torch.nn.functional.softplus(violation) if soft else violation.clamp_min(0)
    return per.mean()


class TripletLoss(Loss):
    """Triplet loss over batch_hard, batch_all or semi_hard triplets. Explicit pairs (the
    validation pair loss) are scored with the contrastive pair loss at the same margin."""

    name: ClassVar[str] = "triplet"
    miners: ClassVar[tuple[str, ...]] = ("batch_all", "batch_hard", "semi_hard")

    def __init__(
        self,
        miner: str = "batch_all",
        margin: float = 0.2,
        distance: str = "euclidean",
        soft_margin: bool = False,
        pair_form: str = "squared",
    ):
        super().__init__(miner)
        self.margin, self.distance, self.soft = margin, distance, soft_margin
        self.pair_form = pair_form

    @classmethod
    def from_params(cls, train: LossSettings) -> TripletLoss:
        return cls(
            train.miner, train.margin, train.distance, train.soft_margin, train.contrastive_form
        )

    def _fused(self, emb: torch.Tensor, labels: torch.Tensor) -> _fused.Compute | None:
        if self.distance == "cosine" or emb.dtype not in _fused.DTYPES:
            return None
        m, kind = self.margin, self.distance
        if self.miner_name == "batch_hard":
            return _fused.batch_hard(labels, m, kind, self.soft)
        return _fused.triplets(labels, m, kind, self.soft, self.miner_name == "semi_hard")

    def reference(
        self, emb: torch.Tensor, labels: torch.Tensor, encoder: PairScorer | None = None
    ) -> tuple[torch.Tensor, Stats]:
        dist = pairwise_distance(emb, kind=self.distance)
        loss = emb.sum() * 0.0  # keeps the graph connected when nothing is mined
        triplets = self.miner(dist, labels, self.margin)
        if len(triplets[0]) == 0:
            return loss, {"mined_triplets": 0}
        loss = loss + mined_triplet_loss(dist, triplets, self.margin, self.soft)
        return loss, {"mined_triplets": len(triplets[0])}

    def explicit_pair_loss(
        self, encoder: PairScorer, a: torch.Tensor, b: torch.Tensor, same: torch.Tensor
    ) -> torch.Tensor:
        return contrastive_pair_loss(encoder.pair_distance(a, b), same, self.margin, self.pair_form)
