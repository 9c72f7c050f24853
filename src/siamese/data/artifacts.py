"""The prepared data and the mined pairs on disk: the one reader and writer of the prepare and
mine outputs, so every later step (training, calibration, evaluation, promotion, mining with a
reference model) reads them the same way without importing a stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from siamese.data.split import SPLITS
from siamese.data.store import IMAGES_FILE, MappedImages, create_images
from siamese.errors import DatasetError
from siamese.io import save_npz

META_FILE = "meta.npz"  # per image: label, split, group, forged (a few bytes an image)
OLD_DATA_FILE = "data.npz"  # the one compressed file written before the memory-mapped store
PAIR_KEYS = ("a", "b", "y", "kind")  # image indices, same identity (1/0), kind of pair (mine)
_COPY_ROWS = 1024


def write_prepared(
    out_dir: str | Path,
    *,
    images: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    groups: np.ndarray,
    forged: np.ndarray,
) -> None:
    """The prepare stage's arrays: uint8 images, (N, H, W, C) channels last (C = 1 gray, 3 RGB:
    the layout PIL decodes to and albumentations augments) in ``images.npy``, and each image's
    label, split index (into ``SPLITS``), group index (-1: no groups) and skilled-forgery flag
    in ``meta.npz``. Images already decoded into ``out_dir/images.npy`` (prepare decodes
    straight into it) are only flushed; any other array is copied in slices."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / IMAGES_FILE
    filename = getattr(images, "filename", None)
    if filename is not None and Path(filename).resolve() == path.resolve():
        images.flush()
    else:
        target = create_images(path, len(images), images.shape[1:])
        for start in range(0, len(images), _COPY_ROWS):
            target[start : start + _COPY_ROWS] = images[start : start + _COPY_ROWS]
        target.flush()
        del target
    save_npz(out_dir / META_FILE, labels=labels, split=split, groups=groups, forged=forged)


class PreparedData:
    """The prepare stage's output for the later stages. ``images`` is mapped from disk, never
    read whole: index it with the rows needed (a batch, a split's indices).

    ``groups`` is each image's group index (-1: the dataset has no groups) and ``forged`` flags
    skilled signature forgeries."""

    def __init__(self, prepared_dir: str | Path):
        prepared_dir = Path(prepared_dir)
        if not (prepared_dir / IMAGES_FILE).is_file() and (prepared_dir / OLD_DATA_FILE).is_file():
            raise DatasetError(
                f"{prepared_dir} holds prepared data in the old single-file format "
                f"({OLD_DATA_FILE}, read whole into memory); rerun prepare (`siamese prepare` or "
                f"`dvc repro prepare`) to write the memory-mapped {IMAGES_FILE} the stages read"
            )
        self.images = MappedImages(prepared_dir / IMAGES_FILE)
        with np.load(prepared_dir / META_FILE) as z:
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
