"""The multi-similarity loss (Wang et al. 2019) over every pair of a batch (the all_pairs
selection), on cosine similarity, as pytorch-metric-learning's MultiSimilarityLoss."""

from __future__ import annotations

from typing import ClassVar

import torch

from siamese.losses import _fused
from siamese.losses.base import Loss, LossSettings, PairScorer, Stats
from siamese.losses.contrastive import contrastive_pair_loss
from siamese.mining.online import label_masks


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

    x = torch.nn.functional.normalize(emb, dim=1)
    sim = x @ x.T
    pos, neg = label_masks(labels)
    pos_term = _log1p_sum_exp(-alpha * (sim - base), pos) / alpha
    neg_term = _log1p_sum_exp(beta * (sim - base), neg) / beta
    return (pos_term + neg_term).mean()


class MultiSimilarityLoss(Loss):
    """Multi-similarity loss with weights ``alpha`` (positives), ``beta`` (negatives) around the
    similarity offset ``base``. It mines nothing (stats are empty); explicit pairs (the
    validation pair loss) are scored with the contrastive pair loss at ``pair_margin``."""

    name: ClassVar[str] = "multi_similarity"
    miners: ClassVar[tuple[str, ...]] = ("all_pairs",)

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 50.0,
        base: float = 0.5,
        miner: str = "all_pairs",
        pair_margin: float = 0.5,
        pair_form: str = "squared",
    ):
        super().__init__(miner)
        self.alpha, self.beta, self.base = alpha, beta, base
        self.pair_margin, self.pair_form = pair_margin, pair_form

    @classmethod
    def from_params(cls, train: LossSettings) -> MultiSimilarityLoss:
        return cls(
            train.ms_alpha,
            train.ms_beta,
            train.ms_base,
            train.miner,
            train.margin,
            train.contrastive_form,
        )

    def _fused(self, emb: torch.Tensor, labels: torch.Tensor) -> _fused.Compute | None:
        ms = (self.alpha, self.beta, self.base)
        if emb.dtype not in _fused.DTYPES or not _fused.exp_is_safe(*ms, emb.dtype, len(labels)):
            return None
        return _fused.multi_similarity(labels, *ms)

    def reference(
        self, emb: torch.Tensor, labels: torch.Tensor, encoder: PairScorer | None = None
    ) -> tuple[torch.Tensor, Stats]:
        return multi_similarity_loss(emb, labels, self.alpha, self.beta, self.base), {}

    def explicit_pair_loss(
        self, encoder: PairScorer, a: torch.Tensor, b: torch.Tensor, same: torch.Tensor
    ) -> torch.Tensor:
        return contrastive_pair_loss(
            encoder.pair_distance(a, b), same, self.pair_margin, self.pair_form
        )
