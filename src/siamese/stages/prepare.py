"""prepare: load the configured source, validate it, and write identity-disjoint splits."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from siamese.config import Params
from siamese.data.sources import load_source
from siamese.data.split import SPLITS, split_identities
from siamese.io import atomic_dir, save_npz, write_json

log = logging.getLogger(__name__)


def _inside_data_dir(source: str) -> bool:
    data_dir = Path("data").resolve()
    return Path(source).resolve().is_relative_to(data_dir)


def run_prepare(params: Params, out_dir: str | Path) -> dict:
    d = params.data
    if d.source != "digits" and not _inside_data_dir(d.source):
        log.warning(
            "data.source %s is outside the project's data/ folder, so DVC does not version it; "
            "run `siamese data add %s` to track it",
            d.source,
            d.source,
        )
    ds = load_source(
        d.source, d.image_size, d.min_images_per_identity, d.on_bad_image, d.on_small_identity
    )
    assignment = split_identities(ds.identities, d.val_fraction, d.test_fraction, params.seed)
    names = sorted(set(ds.identities))
    label_of = {name: i for i, name in enumerate(names)}
    labels = np.array([label_of[i] for i in ds.identities], dtype=np.int64)
    split = np.array([SPLITS.index(assignment[i]) for i in ds.identities], dtype=np.int8)

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["index", "source", "identity", "label", "split", "sha256"])
    for i, (src, ident, h) in enumerate(zip(ds.sources, ds.identities, ds.hashes, strict=True)):
        writer.writerow([i, src, ident, label_of[ident], assignment[ident], h])

    summary = {
        "source": d.source,
        "image_size": d.image_size,
        "images": int(len(labels)),
        "identities": len(names),
        "skipped_images": len(ds.skipped["images"]),
        "skipped_identities": len(ds.skipped["identities"]),
    }
    for s_idx, s in enumerate(SPLITS):
        summary[f"{s}_images"] = int((split == s_idx).sum())
        summary[f"{s}_identities"] = sum(1 for v in assignment.values() if v == s)
    if ds.skipped["images"] or ds.skipped["identities"]:
        log.warning(
            "skipped %d unreadable image(s) and %d identity(ies) with too few images",
            summary["skipped_images"],
            summary["skipped_identities"],
        )
    with atomic_dir(out_dir) as tmp:
        save_npz(tmp / "data.npz", images=ds.images, labels=labels, split=split)
        (tmp / "manifest.csv").write_text(buf.getvalue())
        write_json(tmp / "identities.json", {"names": names, "split": assignment})
        write_json(tmp / "skipped.json", ds.skipped)
        write_json(tmp / "summary.json", summary)
    return summary


class PreparedData:
    """The prepare stage's output, loaded once for the later stages."""

    def __init__(self, prepared_dir: str | Path):
        prepared_dir = Path(prepared_dir)
        with np.load(prepared_dir / "data.npz") as z:
            self.images = z["images"]
            self.labels = z["labels"]
            self.split = z["split"]

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == SPLITS.index(split))
