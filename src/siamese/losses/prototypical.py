"""The prototypical loss (Snell et al. 2017) within a P x K batch: every image is a query
against the class prototypes (mean embeddings) of the batch, its own class's prototype left
without it, scored by -squared euclidean distance / temperature and a softmax over the batch's
classes. Each batch is an episode of P ways; the sampler's K images per identity are the shots."""

from __future__ import annotations

from typing import ClassVar

import torch

from siamese.losses.base import PairScorer, Stats
from siamese.losses.temperature import TemperatureLoss


def prototypical_loss(emb: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean cross entropy of each query (an image whose class has another image in the batch)
    against the P prototypes; its own prototype is the mean of its class's other images."""
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    onehot = torch.nn.functional.one_hot(inverse, len(classes)).to(emb.dtype)  # (B, P)
    sums = onehot.T @ emb  # (P, D)
    protos = sums / counts[:, None].to(emb.dtype)
    # squared distance of every image to every prototype, then to its own class's prototype
    # without itself: (sum - x) / (n - 1)
    d = torch.cdist(emb, protos).pow(2)
    query = counts[inverse] > 1
    if len(classes) < 2 or not query.any():
        return emb.sum() * 0.0  # one class, or no class with a second image: no episode
    own = (sums[inverse] - emb) / (counts[inverse, None].to(emb.dtype) - 1).clamp_min(1)
    d_own = (emb - own).pow(2).sum(1)
    d = torch.where(onehot.bool(), d_own[:, None], d)
    logits = -d / temperature
    return torch.nn.functional.cross_entropy(logits[query], inverse[query])


class PrototypicalLoss(TemperatureLoss):
    """Snell et al.'s prototypical loss at ``temperature`` (``train.temperature``) over the
    batch's classes (the all_pairs selection: every image against every prototype). Explicit
    pairs (the validation pair loss) are scored with the contrastive pair loss at
    ``pair_margin``. Train it on ``train.distance: squared_euclidean`` (or euclidean), the
    metric the prototypes are compared with."""

    name: ClassVar[str] = "prototypical"

    def reference(
        self, emb: torch.Tensor, labels: torch.Tensor, encoder: PairScorer | None = None
    ) -> tuple[torch.Tensor, Stats]:
        counts = torch.unique(labels, return_counts=True)[1]
        stats = {"ways": len(counts), "queries": int(counts[counts > 1].sum())}
        return prototypical_loss(emb, labels, self.temperature), stats
