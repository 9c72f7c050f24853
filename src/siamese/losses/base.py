"""What every loss offers training, so the LightningModule composes any registered loss without
knowing which one it is: the in-batch loss over a labelled batch (after in-batch mining), and
the loss of explicit pairs (offline training pairs, the validation pair loss).

A loss declares the ``train.miner`` choices it works with (``miners``) and the similarity head
its model needs (``head``, None for a fixed distance); siamese.losses collects the classes into
the registry the config reads."""

from __future__ import annotations

from typing import ClassVar, Protocol

import torch

from siamese.losses import _fused
from siamese.mining import MINERS
from siamese.models.precision import autocast_off, full_precision

Stats = dict[str, int]


class LossSettings(Protocol):
    """The settings a loss is built from: the ``train`` section of the validated params
    (siamese.config.TrainParams) satisfies it; losses never import the config."""

    loss: str
    miner: str
    margin: float
    distance: str
    contrastive_form: str
    soft_margin: bool
    ms_alpha: float
    ms_beta: float
    ms_base: float
    temperature: float


class PairScorer(Protocol):
    """The model side a pair loss needs (siamese.models.encoders.SiameseEncoder)."""

    def pair_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor: ...

    def pair_logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor: ...


class Loss(torch.nn.Module):
    """A training loss: ``loss(emb, labels)`` mines in the batch and reduces, returning
    (loss, stats of what was mined); ``pair_loss(encoder, a, b, same)`` scores explicit pairs.

    Subclasses implement ``reference`` (mined index tuples, autograd) and
    ``explicit_pair_loss``, and may offer a fused fast path through ``_fused``; ``forward`` takes
    the fast path whenever it applies. Both entry points compute in at least float32, with
    autocast off: 16-bit embeddings (mixed or half precision training) are widened first. A
    loss holds no parameters or buffers: a model's state dict is its encoder's."""

    name: ClassVar[str]
    miners: ClassVar[tuple[str, ...]]  # the train.miner choices it works with
    head: ClassVar[str | None] = None  # the similarity head it trains (siamese.models.heads)

    def __init__(self, miner: str):
        super().__init__()
        if miner not in self.miners:
            raise ValueError(
                f"miner {miner!r} does not work with loss {self.name!r}; "
                f"allowed for {self.name}: {', '.join(self.miners)}"
            )
        self.miner_name = miner
        self.miner = MINERS[miner].mine  # None for offline pairs: pair_loss only

    @classmethod
    def from_params(cls, train: LossSettings) -> Loss:
        """The loss configured by validated ``train`` params."""
        raise NotImplementedError

    def forward(
        self, emb: torch.Tensor, labels: torch.Tensor, encoder: PairScorer | None = None
    ) -> tuple[torch.Tensor, Stats]:
        """The loss of a labelled batch of embeddings and the counts of what was mined.
        ``encoder``: the model the embeddings came from (only a learned head needs it)."""
        if self.miner is None:
            raise ValueError(
                f"miner {self.miner_name!r} trains on explicit pairs: use pair_loss, not an "
                "in-batch loss"
            )
        emb = full_precision(emb)  # 16-bit embeddings (mixed or half precision): float32
        with autocast_off(emb):
            compute = self._fused(emb, labels)
            if compute is None:
                return self.reference(emb, labels, encoder)
            return _fused.run(emb, compute)

    def _fused(self, emb: torch.Tensor, labels: torch.Tensor) -> _fused.Compute | None:
        """The fused fast path for this batch, or None where it does not apply."""
        return None

    def reference(
        self, emb: torch.Tensor, labels: torch.Tensor, encoder: PairScorer | None = None
    ) -> tuple[torch.Tensor, Stats]:
        """Mined index tuples reduced over an autograd distance matrix (any distance)."""
        raise NotImplementedError

    def pair_loss(
        self, encoder: PairScorer, a: torch.Tensor, b: torch.Tensor, same: torch.Tensor
    ) -> torch.Tensor:
        """The loss of explicit pairs of embeddings ``a[i], b[i]`` labelled ``same[i]``, in at
        least float32 whatever precision the embeddings come in."""
        a, b = full_precision(a), full_precision(b)
        with autocast_off(a):
            return self.explicit_pair_loss(encoder, a, b, same)

    def explicit_pair_loss(
        self, encoder: PairScorer, a: torch.Tensor, b: torch.Tensor, same: torch.Tensor
    ) -> torch.Tensor:
        """``pair_loss`` on embeddings already in full precision (what subclasses write)."""
        raise NotImplementedError
