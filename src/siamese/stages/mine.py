"""mine: write the fixed validation/test pairs and, when configured, offline training pairs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from siamese.config import Params
from siamese.data.artifacts import PreparedData, write_pairs
from siamese.data.images import resize_array
from siamese.errors import DatasetError
from siamese.io import atomic_dir, write_json
from siamese.mining.offline import (
    RANDOM_NEGATIVE,
    SKILLED_FORGERY,
    balanced_pairs,
    hard_negative_pairs,
    skilled_forgery_pairs,
)
from siamese.models.loading import embed
from siamese.registry.loading import load_registered_encoder

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
    size = encoder.config["image_size"]
    images = data.images[idx]
    if images.shape[1] != size:
        images = np.stack([resize_array(im, size) for im in images])
    return {"uri": uri, "indices": idx, "embeddings": embed(encoder, images), "count": 0}


def _with_hard_negatives(pairs: dict, data: PreparedData, reference: dict, params, seed) -> dict:
    """Replace a fraction of the random negative pairs by the reference model's hardest ones."""
    neg = np.flatnonzero(pairs["y"] == 0)
    n_hard = int(round(len(neg) * params.mine.hard_negative_fraction))
    hard = hard_negative_pairs(
        reference["indices"], data.labels, reference["embeddings"], n_hard, seed
    )
    reference["count"] = len(hard)
    replace = neg[: len(hard)]
    pairs = {k: v.copy() for k, v in pairs.items()}
    pairs["a"][replace], pairs["b"][replace] = hard[:, 0], hard[:, 1]
    return pairs


def _with_skilled_forgeries(
    pairs: dict, data: PreparedData, split: str, wanted: int | None, seed: int
) -> tuple[dict, int]:
    """Add (genuine, forged) pairs of one writer as negatives of kind SKILLED_FORGERY, so
    evaluation can report the skilled-forgery error apart from the random-forgery one."""
    idx = data.indices(split)
    if not data.forged[idx].any() or wanted == 0:
        return pairs, 0
    if wanted is None:  # as many as the random negatives, at most every pair there is
        lab, fg = data.labels[idx], data.forged[idx]
        available = sum(
            int(((lab == c) & ~fg).sum()) * int(((lab == c) & fg).sum()) for c in np.unique(lab)
        )
        wanted = min(int((pairs["y"] == 0).sum()), available)
    extra = skilled_forgery_pairs(idx, data.labels, data.forged, wanted, seed)
    n = len(extra)
    merged = {
        "a": np.r_[pairs["a"], extra[:, 0]],
        "b": np.r_[pairs["b"], extra[:, 1]],
        "y": np.r_[pairs["y"], np.zeros(n, np.int8)].astype(np.int8),
        "kind": np.r_[pairs["kind"], np.full(n, SKILLED_FORGERY, np.int8)].astype(np.int8),
    }
    order = np.random.default_rng([seed, SKILLED_FORGERY]).permutation(len(merged["y"]))
    return {k: v[order] for k, v in merged.items()}, n


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
        reference = _reference_embeddings(params.mine.hard_negatives_from, data)
    with atomic_dir(out_dir) as tmp:
        for split, n in counts.items():
            seed = params.seed * 1000 + _SEED_OFFSETS[split]
            try:
                pairs = balanced_pairs(data.indices(split, forged=False), data.labels, n, seed)
            except DatasetError as err:
                raise DatasetError(f"mine.{split}_pairs={n} on the {split} split: {err}") from None
            if split == "train" and reference is not None:
                pairs = _with_hard_negatives(pairs, data, reference, params, seed)
                summary["train_hard_negatives"] = int(reference["count"])
                summary["reference_model"] = reference["uri"]
            pairs["kind"] = np.where(pairs["y"] == 1, 0, RANDOM_NEGATIVE).astype(np.int8)
            if split != "train":
                pairs, n_skilled = _with_skilled_forgeries(
                    pairs, data, split, params.mine.skilled_forgery_pairs, seed
                )
                if n_skilled:
                    summary[f"{split}_skilled_forgery"] = n_skilled
            write_pairs(tmp, split, pairs)
            summary[f"{split}_pairs"] = int(len(pairs["y"]))
            summary[f"{split}_positive"] = int(pairs["y"].sum())
        write_json(tmp / "summary.json", summary)
    return summary
