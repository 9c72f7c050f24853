"""The prepared data and the mined pairs on disk: the one reader and writer of the prepare and
mine outputs, so every later step (training, calibration, evaluation, promotion, mining with a
reference model) reads them the same way without importing a stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from siamese.data.split import SPLITS
from siamese.io import save_npz

DATA_FILE = "data.npz"
PAIR_KEYS = ("a", "b", "y", "kind")  # image indices, same identity (1/0), kind of pair (mine)


def write_prepared(
    out_dir: str | Path,
    *,
    images: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    groups: np.ndarray,
    forged: np.ndarray,
) -> None:
    """``data.npz`` of the prepare stage: uint8 images, (N, H, W, C) channels last (C = 1 gray,
    3 RGB: the layout PIL decodes to and albumentations augments), with their label, split
    index (into ``SPLITS``), group index (-1: no groups) and skilled-forgery flag."""
    save_npz(
        Path(out_dir) / DATA_FILE,
        images=images,
        labels=labels,
        split=split,
        groups=groups,
        forged=forged,
    )


class PreparedData:
    """The prepare stage's output, loaded once for the later stages.

    ``groups`` is each image's group index (-1: the dataset has no groups) and ``forged`` flags
    skilled signature forgeries."""

    def __init__(self, prepared_dir: str | Path):
        with np.load(Path(prepared_dir) / DATA_FILE) as z:
            images = z["images"]
            # (N, H, W): written before colour existed, the C = 1 case
            self.images = images[..., None] if images.ndim == 3 else images
            self.labels = z["labels"]
            self.split = z["split"]
            self.groups = z["groups"]
            self.forged = z["forged"]

    def indices(self, split: str, forged: bool = True) -> np.ndarray:
        """Indices of the images in ``split``; ``forged=False`` leaves out skilled forgeries
        (what training and positive pairs use: a forgery is never a positive)."""
        mask = self.split == SPLITS.index(split)
        if not forged:
            mask &= ~self.forged
        return np.flatnonzero(mask)


def pairs_path(pairs_dir: str | Path, split: str) -> Path:
    return Path(pairs_dir) / f"{split}.npz"


def write_pairs(pairs_dir: str | Path, split: str, pairs: dict[str, np.ndarray]) -> None:
    save_npz(pairs_path(pairs_dir, split), **pairs)


def load_pairs(path: str | Path) -> dict[str, np.ndarray]:
    """One split's pairs (``a``, ``b``, ``y`` and ``kind``) from a pairs file."""
    with np.load(path) as z:
        return {k: z[k] for k in PAIR_KEYS}
