"""Enrolment: add identities to a gallery (``siamese enroll``) or remove one (``siamese
unenroll``) without embedding the others again.

Every change is one atomic replacement of the gallery folder (siamese.registry.gallery
``write_gallery``: a scratch folder renamed into place) under the gallery's exclusive lock
(siamese.locking.gallery_lock), so a reader holding the shared lock sees the old gallery or the
new one, and two writers never build on the same old gallery. A writer killed at any point leaves
either the old gallery, or, between the two renames of ``atomic_dir``, the old one under
``.<name>.old-<pid>``: :func:`recover_interrupted_write` (run under the lock by every writer and
reader, siamese.registry.gallery) puts it back and removes scratch folders of dead writers.

The index keeps its kind (flat, IVF: its trained cells are kept and refilled; brute); the
open-set and anomaly thresholds are kept (they were calibrated on people outside the gallery,
see siamese.registry.identify)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import faiss
import numpy as np

from siamese.errors import GalleryError
from siamese.locking import gallery_lock
from siamese.registry.gallery import (
    EMBEDDINGS_FILE,
    INDEX_FILE,
    _build_faiss,
    _faiss_vectors,
    check_gallery_model,
    embed_folder,
    read_gallery,
    recover_interrupted_write,
    require_gallery,
    source_files,
    write_gallery,
)
from siamese.registry.identify import with_open_set_threshold
from siamese.registry.loading import load_served_model


def _load(path: Path, model_uri: str | None, tracking_uri: str | None):
    recover_interrupted_write(path)
    meta = read_gallery(path)
    model = load_served_model(model_uri or meta["model"], tracking_uri)
    check_gallery_model(meta, model, model_uri)
    emb = np.load(path / EMBEDDINGS_FILE).astype(np.float32)
    return meta, model, emb


def _index_for(path: Path, meta: dict, emb: np.ndarray) -> object | None:
    """The gallery's index refilled with ``emb``: flat rebuilt, IVF keeping its trained cells."""
    if meta["index"] == "brute":
        return None
    x = _faiss_vectors(emb, meta["distance"])
    if meta["index"] == "ivf":
        index = faiss.read_index(str(path / INDEX_FILE))
        index.reset()  # the inverted lists emptied; the trained coarse quantizer kept
        index.add(x)
        return index
    return _build_faiss(x, meta["distance"], "flat", 1)


def _history(meta: dict, action: str, names: list[str], source: str | None = None) -> list:
    entry = {
        "action": action,
        "identities": names,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if source is not None:
        entry["source"] = source
    return [*meta.get("history", []), entry]


def enroll(
    root: str | Path,
    path: str | Path,
    model_uri: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """Add the identities of ``root`` (identity folders, as ``siamese index`` reads) to the
    gallery ``path``; an identity the gallery already holds is refused (unenroll it first)."""

    path = Path(path)
    require_gallery(path)
    with gallery_lock(path):
        meta, model, emb = _load(path, model_uri, tracking_uri)
        new_emb, data = embed_folder(root, model, path)
        names = sorted(set(data.identities))
        twice = sorted(set(names) & set(meta["identities"]))
        if twice:
            raise GalleryError(
                f"{len(twice)} identit{'y is' if len(twice) == 1 else 'ies are'} already "
                f"enrolled in {path}: {', '.join(twice[:10])}{' ...' if len(twice) > 10 else ''} "
                "(`siamese unenroll NAME` first to replace one)"
            )
        all_emb = np.concatenate([emb, new_emb.astype(np.float32)])
        meta = {
            **meta,
            "count": int(len(all_emb)),
            "identities": [*meta["identities"], *data.identities],
            "paths": [*meta["paths"], *data.sources],
            "files": [*_entry_files(meta), *source_files(root, data.sources)],
            "history": _history(meta, "enroll", names, str(Path(root).resolve())),
        }
        meta = _rethreshold(meta)
        write_gallery(path, meta, all_emb, _index_for(path, meta, all_emb))
    return _summary(meta, path, enrolled=names, images=len(new_emb))


def unenroll(name: str, path: str | Path) -> dict:
    """Remove every image of identity ``name`` from the gallery ``path``."""

    path = Path(path)
    require_gallery(path)
    with gallery_lock(path):
        recover_interrupted_write(path)
        meta = read_gallery(path)
        ids = np.asarray(meta["identities"], dtype=object)
        keep = ids != name
        if keep.all():
            held = sorted(set(meta["identities"]))
            shown = ", ".join(held[:10]) + (" ..." if len(held) > 10 else "")
            raise GalleryError(
                f"{name!r} is not enrolled in {path} (it holds {len(held)}: {shown})"
            )
        if not keep.any():
            raise GalleryError(
                f"{name!r} is the only identity in {path}: unenrolling it would leave an empty "
                "gallery (delete the folder instead)"
            )
        emb = np.load(path / EMBEDDINGS_FILE).astype(np.float32)[keep]
        rows = np.flatnonzero(keep)
        files = _entry_files(meta)
        meta = {
            **meta,
            "count": int(len(emb)),
            "identities": [meta["identities"][i] for i in rows],
            "paths": [meta["paths"][i] for i in rows],
            "files": [files[i] for i in rows],
            "history": _history(meta, "unenroll", [name]),
        }
        meta = _rethreshold(meta)
        write_gallery(path, meta, emb, _index_for(path, meta, emb))
    return _summary(meta, path, unenrolled=[name], images=int((~keep).sum()))


def _rethreshold(meta: dict) -> dict:
    """The open-set threshold for the gallery's new number of identities (FPIR grows with it,
    siamese.registry.identify)."""
    if not meta.get("open_set"):
        return meta
    return {
        **meta,
        "open_set": with_open_set_threshold(meta["open_set"], len(set(meta["identities"]))),
    }


def _entry_files(meta: dict) -> list[str | None]:
    """Each entry's image file; None for entries of a gallery that did not record them (built
    before files were, or written by hand)."""
    files = meta.get("files")
    return list(files) if files and len(files) == meta["count"] else [None] * meta["count"]


def _summary(meta: dict, path: Path, **change) -> dict:
    return {
        **change,
        "count": meta["count"],
        "identities": len(set(meta["identities"])),
        "index": meta["index"],
        "out": str(path),
    }
