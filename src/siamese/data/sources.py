"""Dataset sources. Each yields identity-labelled grayscale images plus where each came from, so
the manifest can trace every training example back to its origin."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from siamese.data.images import IMAGE_EXTENSIONS, BadImageError, read_image, resize_array

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """The dataset is unusable as given; the message names the path or identity at fault."""


@dataclass
class LoadedDataset:
    images: np.ndarray  # (N, S, S) uint8
    identities: list[str]  # per image
    sources: list[str]  # per image: relative path or "digits:<index>"
    hashes: list[str]  # per image: sha256 of the source content
    skipped: dict[str, list[str]] = field(default_factory=lambda: {"images": [], "identities": []})


def load_digits_dataset(size: int) -> LoadedDataset:
    """scikit-learn's 1,797 real handwritten digits; the identity is the digit."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    raw = (digits.images / 16.0).astype(np.float32)
    images = np.stack([resize_array(img, size) for img in raw])
    identities = [f"digit_{int(t)}" for t in digits.target]
    sources = [f"digits:{i}" for i in range(len(raw))]
    hashes = [hashlib.sha256(digits.images[i].tobytes()).hexdigest() for i in range(len(raw))]
    return LoadedDataset(images, identities, sources, hashes)


def _image_files(folder: Path) -> list[Path]:
    files = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(p)
    return files


def load_folder_dataset(
    root: str | Path,
    size: int,
    min_images: int = 2,
    on_bad_image: str = "error",
    on_small_identity: str = "error",
) -> LoadedDataset:
    """Read ``root/<identity>/<image>``; every sub-folder of root is one identity."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(
            f"dataset path {root} does not exist; set data.source to 'digits' or to a directory "
            "of identity folders root/<identity>/<image>"
        )
    if not root.is_dir():
        raise DatasetError(f"dataset path {root} is not a directory of identity folders")
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if not folders:
        raise DatasetError(
            f"dataset path {root} holds no identity folders (root/<identity>/<image>)"
        )
    images: list[np.ndarray] = []
    identities: list[str] = []
    sources: list[str] = []
    hashes: list[str] = []
    skipped: dict[str, list[str]] = {"images": [], "identities": []}
    for folder in folders:
        ident_images, ident_sources, ident_hashes = [], [], []
        for path in _image_files(folder):
            rel = str(path.relative_to(root))
            try:
                data = path.read_bytes()
                arr = read_image(path, size)
            except (BadImageError, OSError) as err:
                if on_bad_image == "skip":
                    skipped["images"].append(rel)
                    log.warning("skipping unreadable image: %s", err)
                    continue
                raise DatasetError(
                    f"{err} (set data.on_bad_image: skip to skip such files)"
                ) from None
            ident_images.append(arr)
            ident_sources.append(rel)
            ident_hashes.append(hashlib.sha256(data).hexdigest())
        if len(ident_images) < min_images:
            if on_small_identity == "skip":
                skipped["identities"].append(folder.name)
                log.warning(
                    "skipping identity %r: %d image(s), need %d",
                    folder.name,
                    len(ident_images),
                    min_images,
                )
                continue
            raise DatasetError(
                f"identity {folder.name!r} ({folder}) has {len(ident_images)} image(s); every "
                f"identity needs at least {min_images} to form positive pairs (set "
                "data.on_small_identity: skip to leave such identities out)"
            )
        images.extend(ident_images)
        identities.extend([folder.name] * len(ident_images))
        sources.extend(ident_sources)
        hashes.extend(ident_hashes)
    if not images:
        raise DatasetError(f"dataset path {root} contains no usable images")
    return LoadedDataset(np.stack(images), identities, sources, hashes, skipped)


def load_source(
    source: str,
    size: int,
    min_images: int = 2,
    on_bad_image: str = "error",
    on_small_identity: str = "error",
) -> LoadedDataset:
    if source == "digits":
        return load_digits_dataset(size)
    return load_folder_dataset(source, size, min_images, on_bad_image, on_small_identity)
