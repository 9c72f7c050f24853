"""Lightning data module over the prepare and mine outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from siamese.config import Params
from siamese.data.artifacts import PreparedData, load_pairs, pairs_path
from siamese.data.augment import apply_augment, build_augment, seed_worker
from siamese.errors import DatasetError
from siamese.mining import MINERS
from siamese.mining.sampler import PKBatchSampler
from siamese.models.encoders import preprocess


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) -> float (C, H, W), the encoder's input."""
    return preprocess(torch.from_numpy(np.ascontiguousarray(image))[None])[0]


# rows read between unmapping a mapped file's pages (MappedImages): a random row's page fault
# maps a whole large folio of the (hot) page cache, about 0.5 MB of neighbours, so at 4096 rows a
# training process held 1.4 GB of a big file's pages (RSS growing with N); at 32 it holds ~50 MB
# and the madvise costs microseconds (benchmarks/scale.py)
_RELEASE_EVERY = 32


def _row(images: np.ndarray, i: int, reads: list[int]) -> np.ndarray:
    """A writable copy of one image (rows of a memory-mapped file are read-only views). Every
    ``_RELEASE_EVERY`` reads the process unmaps the pages it touched, so a long run's resident
    memory does not grow towards the whole file (the pages stay in the shared page cache)."""
    row = np.array(images[i])
    reads[0] += 1
    if reads[0] % _RELEASE_EVERY == 0 and hasattr(images, "release"):
        images.release()
    return row


class ImageDataset(Dataset):
    """(image, label) by global index, augmented on the fly when a transform is given.

    ``images`` is usually ``PreparedData.images``: the memory-mapped file, which pickles as its
    path, so DataLoader workers each map the same file and share its pages."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None):
        self.images, self.labels, self.transform = images, labels, transform
        self._reads = [0]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = _row(self.images, i, self._reads)
        return _to_tensor(apply_augment(self.transform, image)), int(self.labels[i])


class PairDataset(Dataset):
    """(image_a, image_b, same) for the offline_pairs miner."""

    def __init__(self, images: np.ndarray, pairs: dict, transform=None):
        self.images, self.pairs, self.transform = images, pairs, transform
        self._reads = [0]

    def __len__(self) -> int:
        return len(self.pairs["y"])

    def __getitem__(self, i: int):
        a = apply_augment(self.transform, _row(self.images, self.pairs["a"][i], self._reads))
        b = apply_augment(self.transform, _row(self.images, self.pairs["b"][i], self._reads))
        return _to_tensor(a), _to_tensor(b), int(self.pairs["y"][i])


def check_training_labels(params: Params, labels: np.ndarray) -> None:
    """Fail before training when the P x K sampler cannot draw sensible batches from the
    training labels: fewer than 2 identities, or no identity with K images (an identity with
    fewer than K is sampled with replacement, but if every one is, each batch repeats images)."""
    t = params.train
    if not MINERS[t.miner].online:  # batches of mined pairs: no P x K sampler
        return
    _, counts = np.unique(labels, return_counts=True)
    if len(counts) < 2:
        raise DatasetError(
            f"the training split holds {len(counts)} identity(ies); the P x K sampler needs at "
            "least 2: add identities or lower data.val_fraction / data.test_fraction"
        )
    k, largest = t.images_per_identity, int(counts.max())
    if largest < k:
        raise DatasetError(
            f"train.images_per_identity (K) is {k}, but no training identity has {k} images "
            f"(the largest has {largest}), so every batch would only repeat images: set "
            f"train.images_per_identity to at most {largest}, or add images per identity"
        )


class SiameseDataModule(pl.LightningDataModule):
    def __init__(self, params: Params, prepared_dir: str | Path, pairs_dir: str | Path):
        super().__init__()
        self.params = params
        self.prepared_dir, self.pairs_dir = Path(prepared_dir), Path(pairs_dir)

    def setup(self, stage: str | None = None) -> None:
        self.data = PreparedData(self.prepared_dir)
        self.val_pairs = load_pairs(pairs_path(self.pairs_dir, "val"))
        # validation embeds each image that occurs in a val pair once
        self.val_images = np.unique(np.r_[self.val_pairs["a"], self.val_pairs["b"]])
        # skilled forgeries carry their writer's label but are never positives: not trained on
        self.train_idx = self.data.indices("train", forged=False)
        check_training_labels(self.params, self.data.labels[self.train_idx])

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer else (0, 1)

    def train_dataloader(self) -> DataLoader:
        p, t = self.params, self.params.train
        transform = build_augment(p.augment, p.seed)
        rank, world = self._rank()
        common = dict(
            num_workers=t.num_workers,
            worker_init_fn=seed_worker,
            persistent_workers=t.num_workers > 0,
        )
        if not MINERS[t.miner].online:  # the mine stage's training pairs
            pairs = load_pairs(pairs_path(self.pairs_dir, "train"))
            ds = PairDataset(self.data.images, pairs, transform)
            g = torch.Generator().manual_seed(p.seed)
            sampler = torch.utils.data.distributed.DistributedSampler(
                ds, num_replicas=world, rank=rank, shuffle=True, seed=p.seed
            )
            batch = t.identities_per_batch * t.images_per_identity
            return DataLoader(ds, batch_size=batch, sampler=sampler, generator=g, **common)
        ds = ImageDataset(self.data.images, self.data.labels, transform)
        sampler = PKBatchSampler(
            self.data.labels[self.train_idx],
            t.identities_per_batch,
            t.images_per_identity,
            p.seed,
            t.batches_per_epoch,
            rank,
            world,
        )
        sampler.by_class = {c: self.train_idx[v] for c, v in sampler.by_class.items()}
        return DataLoader(ds, batch_sampler=sampler, **common)

    def val_dataloader(self) -> DataLoader:
        ds = ImageDataset(self.data.images, self.data.labels)
        subset = torch.utils.data.Subset(ds, self.val_images.tolist())
        return DataLoader(subset, batch_size=256, shuffle=False)
