"""Losses over labelled batches of embeddings, one family per module (as in
pytorch-metric-learning, composed at the call): a loss consumes the index tuples a miner
(siamese.mining) returns over a distance matrix (siamese.distances), or explicit pairs.

``LOSSES`` is the one registry of the losses ``train.loss`` can name, each class declaring the
miners it works with; the config takes its allowed values from it, and training builds its
criterion with ``build_loss``."""

from __future__ import annotations

from siamese.losses.base import Loss, LossSettings
from siamese.losses.bce import BalancedBCELoss
from siamese.losses.contrastive import ContrastiveLoss
from siamese.losses.multi_similarity import MultiSimilarityLoss
from siamese.losses.ntxent import NTXentLoss
from siamese.losses.supcon import SupConLoss
from siamese.losses.triplet import TripletLoss

# train.loss: the config's allowed values, in the order its messages list them
LOSSES: dict[str, type[Loss]] = {
    cls.name: cls
    for cls in (
        ContrastiveLoss,
        TripletLoss,
        MultiSimilarityLoss,
        SupConLoss,
        NTXentLoss,
        BalancedBCELoss,
    )
}


def build_loss(train: LossSettings) -> Loss:
    """The criterion that validated ``train`` params name (loss, miner and their settings)."""
    return LOSSES[train.loss].from_params(train)


__all__ = [
    "LOSSES",
    "BalancedBCELoss",
    "ContrastiveLoss",
    "Loss",
    "MultiSimilarityLoss",
    "NTXentLoss",
    "SupConLoss",
    "TripletLoss",
    "build_loss",
]
