"""mine: write the fixed validation/test pairs and, when configured, offline training pairs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from siamese.config import Params
from siamese.data.artifacts import PreparedData, write_pairs
from siamese.data.images import ImageSpec, resize_array
from siamese.errors import DatasetError
from siamese.io import atomic_dir, write_json
from siamese.mining.offline import (
    RANDOM_NEGATIVE,
    balanced_pairs,
    with_hard_negatives,
    with_skilled_forgeries,
)
from siamese.models.loading import embed
from siamese.registry.loading import load_registered_encoder
from siamese.registry.names import check_tracking_names

log = logging.getLogger(__name__)

# distinct seed offsets so the three pair sets are independent draws of one seed
_SEED_OFFSETS = {"train": 0, "val": 1, "test": 2}


def _reference_embeddings(uri: str, data: PreparedData) -> dict | None:
    """Embeddings of the training images under a registered model (e.g. the champion)."""

    try:
        encoder = load_registered_encoder(uri)
    except Exception as err:  # no champion yet (first run) or an unreachable registry
        log.warning("no reference model at %s (%s); using random negatives", uri, err)
        return None
    idx = data.indices("train", forged=False)
    spec = ImageSpec.from_config(encoder.config)
    images = data.images
    if images.shape[1:] != spec.shape:  # a reference model of another image size or colour
        images = _Resized(images, spec)
    emb = embed(encoder, images, indices=idx)  # streamed: a batch of images at a time
    return {"uri": uri, "indices": idx, "embeddings": emb, "count": 0}


class _Resized:
    """Rows of an image array resized for a model of another image size or colour, as they
    are read (a batch at a time)."""

    def __init__(self, images, spec: ImageSpec):
        self.images, self.spec = images, spec

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, rows) -> np.ndarray:
        return np.stack([resize_array(im, self.spec) for im in self.images[rows]])


def run_mine(params: Params, prepared_dir: str | Path, out_dir: str | Path) -> dict:
    """Pairs of genuine images (forgeries are never positives) with a ``kind`` per pair:
    0 genuine positive, 1 random negative (two identities), 2 skilled forgery (genuine vs forged
    signature of one writer; val and test only)."""
    data = PreparedData(prepared_dir)
    counts = {"val": params.mine.val_pairs, "test": params.mine.test_pairs}
    if params.mine.train_pairs > 0:
        counts["train"] = params.mine.train_pairs
    summary: dict[str, int] = {}
    reference = None
    if params.mine.hard_negatives_from and "train" in counts:
        # a URI MLflow refuses is a params error, not a missing champion to fall back from
        check_tracking_names(params)
        reference = _reference_embeddings(params.mine.hard_negatives_from, data)
    with atomic_dir(out_dir) as tmp:
        for split, n in counts.items():
            seed = params.seed * 1000 + _SEED_OFFSETS[split]
            try:
                pairs = balanced_pairs(data.indices(split, forged=False), data.labels, n, seed)
            except DatasetError as err:
                raise DatasetError(f"mine.{split}_pairs={n} on the {split} split: {err}") from None
            if split == "train" and reference is not None:
                pairs = with_hard_negatives(
                    pairs, data, reference, params.mine.hard_negative_fraction, seed
                )
                summary["train_hard_negatives"] = int(reference["count"])
                summary["reference_model"] = reference["uri"]
            pairs["kind"] = np.where(pairs["y"] == 1, 0, RANDOM_NEGATIVE).astype(np.int8)
            if split != "train":
                pairs, n_skilled = with_skilled_forgeries(
                    pairs, data, split, params.mine.skilled_forgery_pairs, seed
                )
                if n_skilled:
                    summary[f"{split}_skilled_forgery"] = n_skilled
            write_pairs(tmp, split, pairs)
            summary[f"{split}_pairs"] = int(len(pairs["y"]))
            summary[f"{split}_positive"] = int(pairs["y"].sum())
        write_json(tmp / "summary.json", summary)
    return summary
