"""mine: write the fixed validation/test pairs and, when configured, offline training pairs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from siamese.config import Params
from siamese.io import atomic_dir, save_npz, write_json
from siamese.mining.offline import balanced_pairs, hard_negative_pairs
from siamese.stages.prepare import PreparedData

log = logging.getLogger(__name__)

# distinct seed offsets so the three pair sets are independent draws of one seed
_SEED_OFFSETS = {"train": 0, "val": 1, "test": 2}


def _reference_embeddings(uri: str, data: PreparedData) -> dict | None:
    """Embeddings of the training images under a registered model (e.g. the champion)."""
    from siamese.embedding import embed, load_registered_encoder

    try:
        encoder = load_registered_encoder(uri)
    except Exception as err:  # no champion yet (first run) or an unreachable registry
        log.warning("no reference model at %s (%s); using random negatives", uri, err)
        return None
    idx = data.indices("train")
    size = encoder.config["image_size"]
    images = data.images[idx]
    if images.shape[1] != size:
        from siamese.data.images import resize_array

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


def run_mine(params: Params, prepared_dir: str | Path, out_dir: str | Path) -> dict:
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
            pairs = balanced_pairs(data.indices(split), data.labels, n, seed)
            if split == "train" and reference is not None:
                pairs = _with_hard_negatives(pairs, data, reference, params, seed)
                summary["train_hard_negatives"] = int(reference["count"])
                summary["reference_model"] = reference["uri"]
            save_npz(tmp / f"{split}.npz", **pairs)
            summary[f"{split}_pairs"] = int(len(pairs["y"]))
            summary[f"{split}_positive"] = int(pairs["y"].sum())
        write_json(tmp / "summary.json", summary)
    return summary
