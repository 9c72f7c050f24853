"""The supervised contrastive loss (Khosla et al. 2020, "SupCon"): each anchor's log-softmax
over every other embedding of the batch, on cosine similarity / temperature, averaged over its
positives; as pytorch-metric-learning's SupConLoss (anchors without a positive are left out)."""

from __future__ import annotations

from typing import ClassVar

import torch

from siamese.losses.base import Loss, LossSettings, PairScorer, Stats
from siamese.losses.contrastive import contrastive_pair_loss
from siamese.mining.online import label_masks


def cosine_logits(emb: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, B) cosine similarities divided by the temperature: the softmax losses' logits."""
    x = torch.nn.functional.normalize(emb, dim=1)
    return x @ x.T / temperature


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


class SupConLoss(Loss):
    """Supervised contrastive loss at ``temperature`` (``train.temperature``); every pair of the
    batch takes part (the all_pairs selection). Explicit pairs (the validation pair loss) are
    scored with the contrastive pair loss at ``pair_margin``."""

    name: ClassVar[str] = "supcon"
    miners: ClassVar[tuple[str, ...]] = ("all_pairs",)

    def __init__(
        self,
        temperature: float = 0.1,
        miner: str = "all_pairs",
        pair_margin: float = 0.5,
        pair_form: str = "squared",
    ):
        super().__init__(miner)
        self.temperature = temperature
        self.pair_margin, self.pair_form = pair_margin, pair_form

    @classmethod
    def from_params(cls, train: LossSettings) -> SupConLoss:
        return cls(train.temperature, train.miner, train.margin, train.contrastive_form)

    def reference(
        self, emb: torch.Tensor, labels: torch.Tensor, encoder: PairScorer | None = None
    ) -> tuple[torch.Tensor, Stats]:
        pos, neg = label_masks(labels)
        stats = {"mined_pos": int(pos.sum()) // 2, "mined_neg": int(neg.sum()) // 2}
        return supcon_loss(emb, labels, self.temperature), stats

    def explicit_pair_loss(
        self, encoder: PairScorer, a: torch.Tensor, b: torch.Tensor, same: torch.Tensor
    ) -> torch.Tensor:
        return contrastive_pair_loss(
            encoder.pair_distance(a, b), same, self.pair_margin, self.pair_form
        )
