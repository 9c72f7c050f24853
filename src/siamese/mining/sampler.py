"""P x K batch sampler: every batch holds P identities with K images each, so in-batch mining
always finds positives and negatives."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class _EpochHook:
    # Lightning calls set_epoch on ``batch_sampler.sampler``; forward it to the batch sampler.
    def __init__(self, owner: PKBatchSampler):
        self._owner = owner

    def set_epoch(self, epoch: int) -> None:
        self._owner.set_epoch(epoch)


class PKBatchSampler:
    """Deterministic per (seed, epoch); under DDP each rank takes a disjoint share of the
    global batches. Identities with fewer than K images are sampled with replacement."""

    def __init__(
        self,
        labels: np.ndarray,
        p: int,
        k: int,
        seed: int,
        batches_per_epoch: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.labels = np.asarray(labels)
        self.classes = np.unique(self.labels)
        if len(self.classes) < 2:
            raise ValueError("the P x K sampler needs at least 2 training identities")
        self.p = min(p, len(self.classes))
        self.k = k
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.by_class = {int(c): np.flatnonzero(self.labels == c) for c in self.classes}
        total = batches_per_epoch or max(1, len(self.labels) // (self.p * self.k))
        self.batches_per_rank = max(1, total // world_size)
        self.epoch = 0
        self.sampler = _EpochHook(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_rank

    def _global_batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        for _ in range(self.batches_per_rank * self.world_size):
            chosen = rng.choice(self.classes, size=self.p, replace=False)
            idx = []
            for c in chosen:
                pool = self.by_class[int(c)]
                idx.append(rng.choice(pool, size=self.k, replace=len(pool) < self.k))
            batches.append(np.concatenate(idx))
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for b in self._global_batches()[self.rank :: self.world_size]:
            yield b.tolist()
