"""The NT-Xent loss (normalised temperature-scaled cross entropy; Chen et al. 2020's SimCLR
loss with identity labels, as in Sohn 2016's N-pair loss): for every positive pair (a, p),
-log of its share of exp(s_ap / t) against the anchor's negatives, on cosine similarity;
averaged over positive pairs, as pytorch-metric-learning's NTXentLoss."""

from __future__ import annotations

from typing import ClassVar

import torch

from siamese.losses.base import PairScorer, Stats
from siamese.losses.temperature import TemperatureLoss, cosine_logits
from siamese.mining.online import label_masks


def ntxent_loss(emb: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over ordered positive pairs (a, p) of log(e^{s_ap} + sum_n e^{s_an}) - s_ap."""
    logits = cosine_logits(emb, temperature)
    pos, neg = label_masks(labels)
    if not pos.any():
        return emb.sum() * 0.0  # no positive pair in the batch
    neg_lse = torch.logsumexp(logits.masked_fill(~neg, float("-inf")), 1, True)  # -inf: none
    per_pair = torch.logaddexp(logits, neg_lse.expand_as(logits)) - logits
    return per_pair[pos].mean()


class NTXentLoss(TemperatureLoss):
    """NT-Xent at ``temperature`` (``train.temperature``) over every positive pair of the batch
    against all of its anchor's negatives (the all_pairs selection). Explicit pairs (the
    validation pair loss) are scored with the contrastive pair loss at ``pair_margin``."""

    name: ClassVar[str] = "ntxent"

    def reference(
        self, emb: torch.Tensor, labels: torch.Tensor, encoder: PairScorer | None = None
    ) -> tuple[torch.Tensor, Stats]:
        pos, neg = label_masks(labels)
        stats = {"mined_pos": int(pos.sum()) // 2, "mined_neg": int(neg.sum()) // 2}
        return ntxent_loss(emb, labels, self.temperature), stats
