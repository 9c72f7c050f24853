"""The supervised contrastive loss (Khosla et al. 2020, "SupCon"): each anchor's log-softmax
over every other embedding of the batch, on cosine similarity / temperature, averaged over its
positives; as pytorch-metric-learning's SupConLoss (anchors without a positive are left out)."""

from __future__ import annotations

from typing import ClassVar

import torch

from siamese.losses.base import PairScorer, Stats
from siamese.losses.temperature import TemperatureLoss, cosine_logits
from siamese.mining.online import label_masks


def supcon_loss(emb: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over anchors with a positive of -mean_p log softmax_{k != anchor}(s_ap / t)."""
    logits = cosine_logits(emb, temperature)
    pos, neg = label_masks(labels)
    others = pos | neg  # every embedding but the anchor itself
    log_prob = logits - torch.logsumexp(logits.masked_fill(~others, float("-inf")), 1, True)
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not has.any() or not neg.any():
        # nothing to pull together, or nothing to push apart (one identity): no signal, as
        # pytorch-metric-learning has it
        return emb.sum() * 0.0
    per_anchor = (log_prob * pos).sum(1)[has] / n_pos[has]
    return -per_anchor.mean()


class SupConLoss(TemperatureLoss):
    """Supervised contrastive loss at ``temperature`` (``train.temperature``); every pair of the
    batch takes part (the all_pairs selection). Explicit pairs (the validation pair loss) are
    scored with the contrastive pair loss at ``pair_margin``."""

    name: ClassVar[str] = "supcon"

    def reference(
        self, emb: torch.Tensor, labels: torch.Tensor, encoder: PairScorer | None = None
    ) -> tuple[torch.Tensor, Stats]:
        pos, neg = label_masks(labels)
        stats = {"mined_pos": int(pos.sum()) // 2, "mined_neg": int(neg.sum()) // 2}
        return supcon_loss(emb, labels, self.temperature), stats
