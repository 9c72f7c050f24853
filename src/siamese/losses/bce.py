"""The balanced binary cross-entropy of Koch et al. 2015's learned similarity head.

The head (siamese.models.heads.WeightedL1Head, owned by the encoder so that serving scores pairs
the same way) turns a pair of embeddings into the logit of p(same); this loss trains it, with
the encoder, on every pair of a batch (the all_pairs selection) or on offline pairs."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from siamese.losses.base import Loss, LossSettings, PairScorer, Stats
from siamese.mining.online import every_pair


def balanced_bce(logits: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy averaged separately over positive and negative pairs, then halved.

    A P x K batch holds far more negative than positive pairs; weighting both classes equally
    (as the contrastive loss here does) stops the head from learning "always different"."""
    same = same.to(torch.bool)
    terms = nn.functional.binary_cross_entropy_with_logits(
        logits, same.to(logits.dtype), reduction="none"
    )
    loss = logits.sum() * 0.0
    parts = 0
    for mask in (same, ~same):
        if mask.any():
            loss = loss + terms[mask].mean()
            parts += 1
    return loss / max(parts, 1)


class BalancedBCELoss(Loss):
    """Balanced BCE over the head's logits (``encoder.pair_logits``): the model it trains gets
    a ``weighted_l1`` head. Stats count the batch's positive and negative pairs."""

    name: ClassVar[str] = "bce"
    miners: ClassVar[tuple[str, ...]] = ("all_pairs", "offline_pairs")
    head: ClassVar[str | None] = "weighted_l1"

    def __init__(self, miner: str = "all_pairs"):
        super().__init__(miner)

    @classmethod
    def from_params(cls, train: LossSettings) -> BalancedBCELoss:
        return cls(train.miner)

    def reference(
        self, emb: torch.Tensor, labels: torch.Tensor, encoder: PairScorer | None = None
    ) -> tuple[torch.Tensor, Stats]:
        if encoder is None:
            raise ValueError("the bce loss scores pairs with the encoder's head: pass encoder")
        i, j, same = every_pair(labels)
        loss = self.pair_loss(encoder, emb[i], emb[j], same)
        return loss, {"pairs_pos": int(same.sum()), "pairs_neg": int((~same).sum())}

    def explicit_pair_loss(
        self, encoder: PairScorer, a: torch.Tensor, b: torch.Tensor, same: torch.Tensor
    ) -> torch.Tensor:
        return balanced_bce(encoder.pair_logits(a, b), same)
