"""What the softmax losses over a batch share (supcon, ntxent, prototypical): a temperature
(``train.temperature``) on their logits, every pair of the batch taking part (the all_pairs
selection), and the validation pair loss of explicit pairs, scored with the contrastive pair
loss at ``pair_margin`` since a softmax over a batch has no per-pair form."""

from __future__ import annotations

from typing import ClassVar

import torch

from siamese.losses.base import Loss, LossSettings, PairScorer
from siamese.losses.contrastive import contrastive_pair_loss


def cosine_logits(emb: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, B) cosine similarities divided by the temperature: the softmax losses' logits."""
    x = torch.nn.functional.normalize(emb, dim=1)
    return x @ x.T / temperature


class TemperatureLoss(Loss):
    """A batch softmax loss at ``temperature``; subclasses write ``reference``."""

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
    def from_params(cls, train: LossSettings) -> TemperatureLoss:
        return cls(train.temperature, train.miner, train.margin, train.contrastive_form)

    def explicit_pair_loss(
        self, encoder: PairScorer, a: torch.Tensor, b: torch.Tensor, same: torch.Tensor
    ) -> torch.Tensor:
        return contrastive_pair_loss(
            encoder.pair_distance(a, b), same, self.pair_margin, self.pair_form
        )
