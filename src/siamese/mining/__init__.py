"""Pair and triplet mining: offline (fixed pair sets, ``offline``) and online (inside a batch,
``online``).

``MINERS`` is the one registry of the miners ``train.miner`` can name: the config takes its
allowed values from it and each loss (siamese.losses) names the entries it works with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from siamese.mining import online


@dataclass(frozen=True)
class Miner:
    """A ``train.miner`` choice. ``mine(dist, labels, margin)`` returns index tuples over a
    batch (``kind``: pairs or triplets); None for offline_pairs, whose pairs come ready-made
    from the mine stage and reach the loss as explicit (a, b, same) batches."""

    mine: Callable | None
    kind: Literal["pairs", "triplets"]

    @property
    def online(self) -> bool:
        """Whether it selects inside a labelled batch (else training runs on explicit pairs)."""
        return self.mine is not None


# train.miner: the config's allowed values, in the order its messages list them
MINERS: dict[str, Miner] = {
    "batch_all": Miner(online.batch_all, "triplets"),
    "batch_hard": Miner(online.batch_hard, "triplets"),
    "semi_hard": Miner(online.semi_hard, "triplets"),
    "hard_pairs": Miner(online.hard_pairs, "pairs"),
    "all_pairs": Miner(online.all_pairs, "pairs"),
    "offline_pairs": Miner(None, "pairs"),
}
