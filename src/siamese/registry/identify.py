"""Decisions against a gallery: 1:N identification with an ``unknown`` answer
(``siamese identify``) and kNN-novelty alarms (``siamese anomaly``), and the calibration of their
thresholds stored in gallery.json.

Thresholds are chosen on identities the gallery does not hold and the model never trained on,
split (seeded, ``identify.enrolled_fraction``) into enrolled and not enrolled exactly as evaluate
splits the test identities (siamese.evaluation.openset):

* ``open_set.threshold``: the largest distance at which at most ``identify.target_fpir`` of the
  not-enrolled probes would be identified as someone (FPIR). ``identify`` answers the best
  identity when its distance is ``<=`` it, else ``unknown``. FPIR grows with the number of
  enrolled identities (a stranger has more people to be mistaken for), so what is kept are the
  not-enrolled probes' distances to each enrolled calibration identity, and the threshold is
  set for the gallery's own size N at the per-identity false-match rate
  ``1 - (1 - target_fpir) ** (1 / N)`` (independent comparisons); enrolment sets it again.
* ``anomaly.threshold``: the distance to the k-th nearest known sample
  (``identify.anomaly_k``) above which at most ``identify.target_false_alarm`` of the enrolled
  identities' own probes would raise an alarm. ``anomaly`` scores a sample against every image
  of the gallery.

Where the calibration images come from (``calibration_images``): by default the validation
split of the project's prepared data (``artifacts/prepared``: identities held out of training,
the ones the verification threshold is calibrated on), or ``--calibrate-from DIR``, identity
folders of people outside both the gallery and the training data. A gallery without thresholds
still searches; ``identify`` and ``anomaly`` refuse it, naming how to calibrate it.

Thresholds do not depend on who is enrolled, so enrolment (siamese.registry.enrolment) keeps
them; the anomaly threshold was set against a gallery of ``identify.gallery_images`` images per
identity, so a gallery with more images per identity alarms somewhat less often than calibrated.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from siamese.config import IdentifyParams
from siamese.data.decoding import Decoder
from siamese.data.files import read_file
from siamese.data.images import array_image, decode_image
from siamese.data.sources import load_folder_dataset
from siamese.data.store import IMAGES_FILE
from siamese.errors import GalleryError
from siamese.evaluation.oneshot import support_distances
from siamese.evaluation.openset import (
    impostor_identity_distances,
    knn_scores,
    lowest_needed,
    per_identity_rate,
    rates_at,
    score_probes,
    split_enrolment,
    threshold_at_false_alarm,
    threshold_for_gallery,
)
from siamese.locking import gallery_lock
from siamese.registry.gallery import (
    EMBEDDINGS_FILE,
    INDEX_FILE,
    _faiss_vectors,
    _scores_to_distances,
    check_gallery_model,
    read_gallery,
    recover_interrupted_write,
    require_gallery,
    search_embeddings,
)
from siamese.registry.loading import load_served_model

UNKNOWN = "unknown"  # what identify answers for a probe of no enrolled identity


@dataclass(frozen=True)
class CalibrationImages:
    """Decoded images (N, H, W, C) and their identity labels, and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    source: str


def calibration_images(
    model, calibrate_from: str | Path | None, prepared: str | Path | None
) -> CalibrationImages | None:
    """The images thresholds are calibrated on: ``calibrate_from`` (identity folders), else the
    validation split of ``prepared`` when that folder exists; None when neither is there."""

    if calibrate_from is not None:
        with tempfile.TemporaryDirectory(prefix="siamese-calibrate.") as scratch:
            data = load_folder_dataset(
                calibrate_from,
                model.image,
                min_images=1,
                on_duplicate_image="keep",
                drop_copies=False,
                decoder=Decoder(workers=None, path=Path(scratch) / IMAGES_FILE),
            )
            images = np.array(data.images)
            data.images = None
        return CalibrationImages(images, np.asarray(data.identities), str(calibrate_from))
    if prepared is None or not Path(prepared).is_dir():
        return None
    from siamese.data.artifacts import PreparedData

    data = PreparedData(prepared)
    idx = data.indices("val", forged=False)
    images = np.array(data.images[idx])
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[1:] != model.image.shape:
        raise GalleryError(
            f"{prepared}: its images are {images.shape[1:]}, the model takes {model.image.shape} "
            "(prepared for another model); pass --calibrate-from DIR (identity folders of people "
            "outside the gallery and the training data)"
        )
    return CalibrationImages(images, data.labels[idx], f"{prepared} (val split)")


def calibrate_thresholds(model, cal: CalibrationImages, params: IdentifyParams, seed: int) -> dict:
    """gallery.json's ``open_set`` and ``anomaly`` calibrations on ``cal`` (module doc), with
    the rates reached there and the counts they rest on. The open-set threshold itself depends
    on the gallery's size: :func:`with_open_set_threshold` sets it."""

    emb = model.embeddings(cal.images)
    try:
        split = split_enrolment(cal.labels, params.enrolled_fraction, params.gallery_images, seed)
    except ValueError as err:
        raise GalleryError(f"cannot calibrate on {cal.source}: {err}") from None
    if len(split.enrolled_probes) == 0:
        raise GalleryError(
            f"cannot calibrate on {cal.source}: no identity has more than "
            f"{params.gallery_images} image(s) (identify.gallery_images) to probe with"
        )
    enc = model.encoder
    counts = {
        "calibrated_on": cal.source,
        "enrolled_identities": split.enrolled_identities,
        "unenrolled_identities": split.unenrolled_identities,
        "gallery_images": params.gallery_images,
        "enrolled_probes": int(len(split.enrolled_probes)),
        "unenrolled_probes": int(len(split.unenrolled_probes)),
        "seed": seed,
    }
    impostors = impostor_identity_distances(enc, emb, cal.labels, split)
    lowest = lowest_needed(impostors, params.target_fpir)
    # the rates on the calibration people themselves, at the threshold of their gallery's size
    scores = score_probes(enc, emb, cal.labels, split)
    t_cal = threshold_for_gallery(
        lowest, len(impostors), params.target_fpir, split.enrolled_identities
    )
    open_set = {
        "target_fpir": params.target_fpir,
        "calibration": {**counts, **rates_at(scores, t_cal), "threshold": t_cal},
        "impostor_count": int(len(impostors)),
        "impostor_lowest": [float(x) for x in lowest],
    }
    reference = emb[split.gallery]
    k = min(params.anomaly_k, len(reference))
    known = knn_scores(enc, emb[split.enrolled_probes], reference, k)
    unseen = knn_scores(enc, emb[split.unenrolled_probes], reference, k)
    a = threshold_at_false_alarm(known, params.target_false_alarm)
    anomaly = {
        "threshold": a,
        "k": int(k),
        "target_false_alarm": params.target_false_alarm,
        "calibration": {
            **counts,
            "false_alarm": float(np.mean(known > a)),
            "detection": float(np.mean(unseen > a)),
        },
    }
    return {"open_set": open_set, "anomaly": anomaly}


def with_open_set_threshold(open_set: dict, identities: int) -> dict:
    """``open_set`` with the threshold for a gallery of ``identities`` (at its target FPIR,
    siamese.evaluation.openset.threshold_for_gallery), and a note when the calibration people
    are too few to resolve it (the threshold then lies below every impostor seen)."""
    lowest = np.asarray(open_set["impostor_lowest"])
    total, target = int(open_set["impostor_count"]), float(open_set["target_fpir"])
    rate = per_identity_rate(target, identities)
    out = {
        **open_set,
        "threshold": threshold_for_gallery(lowest, total, target, identities),
        "gallery_identities": int(identities),
        "per_identity_rate": rate,
    }
    out.pop("note", None)
    if rate * total < 1:
        out["note"] = (
            f"{total} impostor comparisons on the calibration people cannot resolve FPIR "
            f"{target:g} for {identities} enrolled identities (a per-identity rate of "
            f"{rate:.2g}): the threshold lies below every one of them; calibrate on more people"
        )
    return out


def calibrated_gallery(calibration: dict, meta: dict) -> dict:
    """The gallery.json entries of a calibration for the gallery ``meta`` describes."""
    identities = len(set(meta["identities"]))
    return {**calibration, "open_set": with_open_set_threshold(calibration["open_set"], identities)}


def calibration_hook(
    params: IdentifyParams, seed: int, calibrate_from: Path | None, prepared: Path | None
) -> Callable[[object, dict], dict]:
    """build_gallery's ``calibrate``: the thresholds at ``params``, calibrated on
    ``calibrate_from`` (identity folders) or the val split of ``prepared``."""

    def calibrate(model, meta: dict) -> dict:
        found = calibration_images(model, calibrate_from, prepared)
        if found is None:
            raise GalleryError(f"no prepared data at {prepared} to calibrate on")
        return calibrated_gallery(calibrate_thresholds(model, found, params, seed), meta)

    return calibrate


def _thresholds(meta: dict, key: str, path: Path) -> dict:
    found = meta.get(key)
    if not found:
        raise GalleryError(
            f"{path} has no calibrated {key.replace('_', '-')} threshold: rebuild it with "
            "`siamese index ... --calibrate-from DIR` (identity folders of people outside the "
            "gallery), or in the project whose artifacts/prepared holds the model's validation "
            "split"
        )
    return found


def query_images(model, images: list[tuple[str, bytes | np.ndarray]]) -> np.ndarray:
    """Decode named images (encoded bytes, or (H, W[, C]) arrays) as the model's package does:
    (N, H, W, C) uint8. A bad image raises BadImageError naming it."""

    out = np.empty((len(images), *model.image.shape), np.uint8)
    for i, (name, value) in enumerate(images):
        if isinstance(value, np.ndarray):
            out[i] = array_image(value, model.image, name=name, max_pixels=model.max_pixels)
        else:
            out[i] = decode_image(value, model.image, name=name, max_pixels=model.max_pixels)
    return out


def _query_embeddings(meta: dict, emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, np.float64)
    if emb.ndim != 2 or emb.shape[1] != meta["dim"]:
        raise GalleryError(
            f"query embeddings of shape {emb.shape} do not fit the gallery's {meta['dim']}-d "
            "embeddings (another model embedded them)"
        )
    return emb


def identify_embeddings(path: str | Path, meta: dict, emb: np.ndarray, encoder) -> list[dict]:
    """For each query embedding: the best identity (or ``unknown`` beyond the open-set
    threshold), its distance, the threshold, and the nearest identity and image either way."""

    path = Path(path)
    threshold = float(_thresholds(meta, "open_set", path)["threshold"])
    out = []
    for hits in search_embeddings(path, meta, _query_embeddings(meta, emb), 1, encoder):
        best = hits[0]
        known = best["distance"] <= threshold
        out.append(
            {
                "identity": best["identity"] if known else UNKNOWN,
                "distance": best["distance"],
                "threshold": threshold,
                "known": known,
                "nearest": best["identity"],
                "path": best["path"],
            }
        )
    return out


def nearest_distances(path: Path, meta: dict, emb: np.ndarray, k: int, encoder) -> np.ndarray:
    """(queries, k) distances to the k nearest gallery images, ascending (k clamped)."""

    k = min(k, meta["count"])
    if meta["index"] == "brute":
        gallery = np.load(path / EMBEDDINGS_FILE).astype(np.float64)
        return np.sort(support_distances(encoder, emb, gallery), axis=1)[:, :k]
    index = faiss.read_index(str(path / INDEX_FILE))
    if meta["index"] == "ivf":
        index.nprobe = int(meta["nprobe"])
    scores, idx = index.search(_faiss_vectors(emb, meta["distance"]), k)
    d = _scores_to_distances(scores, meta["distance"])
    return np.where(idx >= 0, d, np.inf)  # an IVF search may find fewer than k


def anomaly_embeddings(path: str | Path, meta: dict, emb: np.ndarray, encoder) -> list[dict]:
    """For each query embedding: its kNN novelty score (distance to the k-th nearest gallery
    image), the alarm threshold and whether it raises the alarm."""

    path = Path(path)
    cal = _thresholds(meta, "anomaly", path)
    k, threshold = int(cal["k"]), float(cal["threshold"])
    d = nearest_distances(path, meta, _query_embeddings(meta, emb), k, encoder)
    return [
        {
            "score": float(row[-1]),
            "threshold": threshold,
            "k": k,
            "anomaly": bool(row[-1] > threshold),
        }
        for row in d
    ]


def _gallery_model(
    path: Path,
    meta: dict,
    model_uri: str | None,
    tracking_uri: str | None,
    runtime: str | None = None,
):
    model = load_served_model(model_uri or meta["model"], tracking_uri, runtime)
    check_gallery_model(meta, model, model_uri)
    return model


def decide_files(
    path: str | Path,
    files: list[Path],
    mode: str,
    model_uri: str | None = None,
    tracking_uri: str | None = None,
    runtime: str | None = None,
) -> list[dict]:
    """``identify`` or ``anomaly`` answers for image files, under the gallery's model (or
    ``model_uri``, which must be the same model), each naming its file; its encoder run by
    ``runtime`` (torch or onnx; default: the package's ``serve.runtime``)."""

    if mode not in DECISIONS:
        raise GalleryError(f"unknown mode {mode!r}; allowed: {', '.join(DECISIONS)}")
    path = Path(path)
    images = [(str(f), read_file(f)) for f in files]
    require_gallery(path)
    with gallery_lock(path, shared=True):
        recover_interrupted_write(path, writer=False)
        meta = read_gallery(path)
        _thresholds(meta, "open_set" if mode == "identify" else "anomaly", path)
        model = _gallery_model(path, meta, model_uri, tracking_uri, runtime)
        emb = model.embeddings(query_images(model, images))
        answers = DECISIONS[mode](path, meta, emb, model.encoder)
    return [{"image": name, **a} for (name, _), a in zip(images, answers, strict=True)]


DECISIONS = {"identify": identify_embeddings, "anomaly": anomaly_embeddings}
