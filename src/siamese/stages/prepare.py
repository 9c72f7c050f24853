"""prepare: load the configured source, validate it, and write identity-disjoint splits."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from siamese.config import Params
from siamese.data.artifacts import IMAGES_FILE, write_prepared
from siamese.data.decoding import Decoder
from siamese.data.sources import SKIP_KINDS, load_source
from siamese.data.split import SPLITS, check_given_split, split_groups, split_identities
from siamese.data.store import resize_rows
from siamese.errors import DatasetError
from siamese.io import atomic_dir, write_json
from siamese.stages.provenance import SourceState, source_state

log = logging.getLogger(__name__)


def add_rotation_classes(ds, assignment: dict[str, str], degrees: list[int]) -> int:
    """Add each training identity rotated by ``degrees`` as a new identity of its own.

    A character turned by 90 degrees is a different character, so this multiplies the training
    classes (the standard Omniglot practice since Santoro et al. 2016) without touching val or
    test: only training identities are rotated. Returns the number of images added. Images
    mapped from a file grow in place (the file gains the rows)."""
    train = [
        i
        for i, ident in enumerate(ds.identities)
        if assignment[ident] == "train" and not ds.forged[i]
    ]
    n, added = len(ds.images), len(train) * len(degrees)
    if not added:
        return 0
    if isinstance(ds.images, np.memmap) and ds.images.filename is not None:
        path = ds.images.filename
        ds.images.flush()
        ds.images = resize_rows(path, n + added)
    else:
        ds.images = np.concatenate([ds.images, np.empty((added, *ds.images.shape[1:]), np.uint8)])
    row = n
    for deg in degrees:
        for i in train:
            ds.images[row] = np.rot90(ds.images[i], deg // 90)
            row += 1
            name = f"{ds.identities[i]}@rot{deg}"
            ds.identities.append(name)
            ds.sources.append(f"{ds.sources[i]}#rot{deg}")
            ds.groups.append(ds.groups[i])
            ds.forged.append(False)
            ds.hashes.append(ds.hashes[i])
            assignment[name] = "train"
    return added


def run_prepare(params: Params, out_dir: str | Path) -> dict:
    d = params.data
    # before any work: refuse data whose DVC record is stale, warn about unversioned data
    state = source_state(d.source, ".", d.max_file_bytes)
    if state.warning:
        log.warning("%s", state.warning)
    # images are decoded in parallel straight into the output's scratch folder, memory-mapped:
    # prepare never holds the dataset in memory, and a failure leaves the old output as it was
    with atomic_dir(out_dir) as tmp:
        decoder = Decoder(workers=d.workers, path=tmp / IMAGES_FILE, progress=True)
        summary = _prepare_into(params, state, decoder, tmp)
    return summary


def _prepare_into(params: Params, state: SourceState, decoder: Decoder, tmp: Path) -> dict:
    """Load, split and write the prepared dataset into the scratch folder ``tmp``."""
    d = params.data
    ds = load_source(
        d.source,
        d.image,
        d.min_images_per_identity,
        d.on_bad_image,
        d.on_small_identity,
        d.layout,
        d.identity_depth,
        d.on_duplicate_image,
        d.max_file_bytes,
        decoder,
    )
    split_by = d.split_by
    if split_by == "auto":
        split_by = "group" if ds.has_groups else "identity"
    if ds.splits is not None:  # the data assigns the splits (a manifest's split column)
        if d.split_by != "auto":
            log.warning(
                "data.split_by %s is not used: the split column of %s assigns each identity "
                "its split",
                d.split_by,
                d.source,
            )
        split_by = "column"
        assignment = check_given_split(ds.splits, where=d.source)
    elif split_by == "group":
        if not ds.has_groups:
            raise DatasetError(
                f"data.split_by: group needs a dataset with groups (layout grouped, e.g. "
                f"<Alphabet>/<character>/, or a table with a group column); {d.source} was read "
                f"as layout {ds.layout}"
            )
        group_of = dict(zip(ds.identities, ds.groups, strict=True))
        assignment = split_groups(
            group_of, d.val_fraction, d.test_fraction, params.seed, where=d.source
        )
    else:
        assignment = split_identities(
            ds.identities, d.val_fraction, d.test_fraction, params.seed, where=d.source
        )
    rotated = add_rotation_classes(ds, assignment, d.rotation_classes)
    names = sorted(set(ds.identities))
    label_of = {name: i for i, name in enumerate(names)}
    labels = np.array([label_of[i] for i in ds.identities], dtype=np.int64)
    split = np.array([SPLITS.index(assignment[i]) for i in ds.identities], dtype=np.int8)
    group_names = sorted({g for g in ds.groups if g is not None})
    group_of_name = {g: i for i, g in enumerate(group_names)}
    groups = np.array([-1 if g is None else group_of_name[g] for g in ds.groups], dtype=np.int64)
    forged = np.array(ds.forged, dtype=bool)

    # the manifest is written as it is built: one row per image, never a second copy in memory
    with (tmp / "manifest.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["index", "source", "identity", "label", "split", "group", "forged", "sha256"]
        )
        rows = zip(ds.sources, ds.identities, ds.groups, ds.forged, ds.hashes, strict=True)
        for i, (src, ident, group, is_forged, h) in enumerate(rows):
            writer.writerow(
                [i, src, ident, label_of[ident], assignment[ident], group or "", int(is_forged), h]
            )

    summary = {
        "source": d.source,
        "source_record": state.record,  # the DVC record of the source (None: unversioned)
        "source_fingerprint": state.fingerprint,  # a source outside data/: its content hash
        "image_size": d.image_size,
        "channels": d.channels,
        "resize": d.resize,
        "images": int(len(labels)),
        "identities": len(names),
        "layout": ds.layout,
        "split_by": split_by,
        "groups": len(group_names),
        "forged_images": int(forged.sum()),
        "rotated_images": rotated,
        **{f"skipped_{kind}": len(ds.skipped.get(kind, [])) for kind in SKIP_KINDS},
    }
    for s_idx, s in enumerate(SPLITS):
        summary[f"{s}_images"] = int((split == s_idx).sum())
        summary[f"{s}_identities"] = sum(1 for v in assignment.values() if v == s)
        if group_names:
            summary[f"{s}_groups"] = len(set(groups[split == s_idx].tolist()))
    if any(ds.skipped.values()):
        log.warning(
            "skipped %d unreadable image(s), %d identity(ies) with too few images, %d "
            "image(s) filed under two or more identities, %d byte-identical copy(ies) within an "
            "identity and %d file(s) not read (listed in skipped.json)",
            *(summary[f"skipped_{kind}"] for kind in SKIP_KINDS),
        )
    write_prepared(
        tmp,
        images=ds.images,
        labels=labels,
        split=split,
        groups=groups,
        forged=forged,
    )
    write_json(
        tmp / "identities.json", {"names": names, "split": assignment, "groups": group_names}
    )
    write_json(tmp / "skipped.json", ds.skipped)
    write_json(tmp / "summary.json", summary)
    return summary
