"""Open-set (1:N) identification and kNN novelty, the way 1:N systems are reported (NIST FRVT
1:N, Grother et al.): a gallery of *enrolled* identities is searched by probes of which some
belong to nobody enrolled, and a probe is identified only when its best gallery distance is under
a threshold.

- A probe's **best match** is the enrolled identity at the smallest distance to any of its gallery
  images, at that distance.
- **FPIR(t)**, false-positive identification rate: the share of *not-enrolled* probes whose best
  distance is ``<= t`` (someone was named who is not there).
- **FNIR(t)**, false-negative identification rate: the share of *enrolled* probes that are not
  identified correctly at ``t``: the best match is another identity, or its distance is ``> t``.
- Closed-set **rank-k** identification rate: the share of enrolled probes whose own identity is
  among their k best matches (no threshold).
- **kNN novelty** (anomaly) score of a sample: its distance to the k-th nearest *known* sample;
  the AUROC of known against unseen identities says how well it separates them.

The split of identities into enrolled and not-enrolled is seeded, so metrics.json is
reproducible. Pure numpy over embeddings: ``encoder`` is what
:func:`siamese.evaluation.oneshot.support_distances` takes (the model, or a distance name)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from siamese.evaluation import metrics
from siamese.evaluation.oneshot import support_distances

RANKS = (1, 5)  # the closed-set identification rates reported


@dataclass(frozen=True)
class EnrolmentSplit:
    """Indices (into the embeddings) of the gallery images, the probes of enrolled identities
    and the probes of identities that were never enrolled."""

    gallery: np.ndarray
    enrolled_probes: np.ndarray
    unenrolled_probes: np.ndarray
    enrolled_identities: int
    unenrolled_identities: int


def split_enrolment(
    labels: np.ndarray, enrolled_fraction: float, gallery_images: int, seed: int
) -> EnrolmentSplit:
    """Seeded split of the identities into enrolled (``gallery_images`` random images each in
    the gallery, the rest probes) and not enrolled (every image a probe). At least one identity
    lands on each side; raises ValueError with fewer than two identities."""

    labels = np.asarray(labels)
    ids = np.unique(labels)
    if len(ids) < 2:
        raise ValueError(f"open-set identification needs two or more identities (got {len(ids)})")
    rng = np.random.default_rng(seed)
    order = rng.permutation(ids)
    n_enrolled = int(np.clip(round(enrolled_fraction * len(ids)), 1, len(ids) - 1))
    enrolled = set(order[:n_enrolled].tolist())
    gallery, probes, unknown = [], [], []
    for ident in ids:  # sorted: the draw below depends on the seed only
        rows = np.flatnonzero(labels == ident)
        if ident in enrolled:
            rows = rng.permutation(rows)
            gallery.extend(rows[:gallery_images])
            probes.extend(rows[gallery_images:])
        else:
            unknown.extend(rows)
    as_idx = lambda x: np.sort(np.asarray(x, np.int64))  # noqa: E731
    return EnrolmentSplit(
        as_idx(gallery), as_idx(probes), as_idx(unknown), n_enrolled, len(ids) - n_enrolled
    )


def identity_distances(
    distances: np.ndarray, gallery_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(probes x gallery images) distances -> (the enrolled identities, sorted; probes x
    identities) distances, each identity at its nearest gallery image."""

    gallery_labels = np.asarray(gallery_labels)
    ids = np.unique(gallery_labels)
    per_id = np.full((distances.shape[0], len(ids)), np.inf)
    for j, ident in enumerate(ids):
        per_id[:, j] = distances[:, gallery_labels == ident].min(axis=1)
    return ids, per_id


def threshold_at_fpir(
    unenrolled_best: np.ndarray, target: float, total: int | None = None
) -> float:
    """The largest threshold whose FPIR on these not-enrolled best distances is ``<= target``
    (accepting ``distance <= t``): halfway between the last impostor distance it may accept
    and the first it must not, so that no tie is split; just below every impostor (by a relative
    1e-6, more than float32 embeddings differ between batch sizes) when ``target`` allows none
    of them. ``total``: the distances given are the lowest of this many (the rest are larger)."""

    s = np.sort(np.asarray(unenrolled_best, np.float64))
    if len(s) == 0:
        raise ValueError("calibrating an open-set threshold needs not-enrolled probes")
    total = len(s) if total is None else total
    allowed = int(np.floor(target * total + 1e-9))  # impostors that may be accepted
    if allowed >= len(s) and total > len(s):
        raise ValueError(f"rate {target} needs the lowest {allowed + 1} of {total} distances")
    if allowed >= len(s):
        return float(s[-1])
    first_refused = s[allowed]
    below = s[s < first_refused]
    if len(below) == 0:
        return float(first_refused - 1e-6 * max(1.0, abs(first_refused)))
    return float((below[-1] + first_refused) / 2)


def per_identity_rate(target_fpir: float, identities: int) -> float:
    """The false-match rate against one enrolled identity that gives FPIR ``target_fpir`` in a
    gallery of ``identities``, were a stranger's comparisons with them independent:
    ``FPIR = 1 - (1 - rate) ** identities``. What carries a threshold calibrated on a few
    validation people to a gallery of another size (FPIR grows with the gallery)."""
    return float(1.0 - (1.0 - target_fpir) ** (1.0 / max(identities, 1)))


def impostor_identity_distances(
    encoder, embeddings: np.ndarray, labels: np.ndarray, split: EnrolmentSplit
) -> np.ndarray:
    """Sorted distances of every not-enrolled probe to every enrolled identity (at its nearest
    gallery image): the false-match samples :func:`threshold_for_gallery` reads."""
    emb = np.asarray(embeddings)
    d = support_distances(encoder, emb[split.unenrolled_probes], emb[split.gallery])
    _, per_id = identity_distances(d, np.asarray(labels)[split.gallery])
    return np.sort(per_id.ravel())


def lowest_needed(sorted_distances: np.ndarray, target_fpir: float) -> np.ndarray:
    """The lowest impostor distances any gallery size can need at ``target_fpir`` (a gallery
    of one identity needs the most: rate = target): what gallery.json keeps of them."""
    keep = int(np.floor(target_fpir * len(sorted_distances) + 1e-9)) + 1
    return np.asarray(sorted_distances[: min(len(sorted_distances), keep)])


def threshold_for_gallery(
    lowest: np.ndarray, total: int, target_fpir: float, identities: int
) -> float:
    """The open-set threshold for a gallery of ``identities`` at ``target_fpir``, from the
    lowest of ``total`` impostor-to-identity distances (:func:`per_identity_rate`)."""
    return threshold_at_fpir(lowest, per_identity_rate(target_fpir, identities), total)


def threshold_at_false_alarm(known_scores: np.ndarray, target: float) -> float:
    """The smallest alarm threshold (alarm when ``score > t``) raising at most ``target`` of
    these known samples' scores: the same rule as :func:`threshold_at_fpir`, mirrored."""

    return -threshold_at_fpir(-np.asarray(known_scores, np.float64), target)


@dataclass(frozen=True)
class OpenSetScores:
    """Per probe: whether its identity is enrolled, its best match is its own identity, its
    best distance, and the rank of its own identity (enrolled probes; 0: not enrolled)."""

    best_distance_enrolled: np.ndarray
    correct_rank1: np.ndarray
    own_rank: np.ndarray
    best_distance_unenrolled: np.ndarray


def score_probes(
    encoder, embeddings: np.ndarray, labels: np.ndarray, split: EnrolmentSplit
) -> OpenSetScores:
    """Search the gallery of ``split`` with each probe."""

    emb, labels = np.asarray(embeddings), np.asarray(labels)
    g_labels = labels[split.gallery]
    out = []
    for probes in (split.enrolled_probes, split.unenrolled_probes):
        d = support_distances(encoder, emb[probes], emb[split.gallery])
        out.append((*identity_distances(d, g_labels), labels[probes]))
    (ids, per_id, own), (_, per_id_u, _) = out
    best = per_id.min(axis=1)
    order = np.argsort(per_id, axis=1, kind="stable")
    ranked = ids[order]
    hit = ranked == own[:, None]
    own_rank = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0)
    return OpenSetScores(best, own_rank == 1, own_rank, per_id_u.min(axis=1))


def rates_at(scores: OpenSetScores, threshold: float) -> dict[str, float]:
    """FPIR and FNIR at one threshold (module doc)."""
    s = scores
    fpir = float(np.mean(s.best_distance_unenrolled <= threshold))
    identified = s.correct_rank1 & (s.best_distance_enrolled <= threshold)
    fnir = float(1.0 - identified.mean()) if len(identified) else float("nan")
    return {"fpir": fpir, "fnir": fnir}


def det_points(scores: OpenSetScores) -> list[tuple[float, float, float]]:
    """(FPIR, FNIR, threshold) at every distinct best distance (and below all of them): the
    open-set DET curve, FNIR against FPIR."""
    s = scores
    thresholds = np.unique(np.r_[s.best_distance_enrolled, s.best_distance_unenrolled])
    imp = np.sort(s.best_distance_unenrolled)
    hits = np.sort(s.best_distance_enrolled[s.correct_rank1])
    n_e = max(len(s.best_distance_enrolled), 1)
    fpir = np.searchsorted(imp, thresholds, side="right") / max(len(imp), 1)
    fnir = 1.0 - np.searchsorted(hits, thresholds, side="right") / n_e
    lowest = float(np.nextafter(thresholds[0], -np.inf)) if len(thresholds) else 0.0
    points = [(0.0, 1.0, lowest)]
    points += [
        (float(a), float(b), float(t)) for a, b, t in zip(fpir, fnir, thresholds, strict=True)
    ]
    return points


def knn_scores(encoder, queries: np.ndarray, known: np.ndarray, k: int) -> np.ndarray:
    """kNN novelty: each query's distance to its k-th nearest known sample (k clamped to the
    known samples there are)."""

    if len(known) == 0:
        raise ValueError("kNN novelty needs known samples")
    d = support_distances(encoder, queries, known)
    kk = min(k, d.shape[1])
    return np.partition(d, kk - 1, axis=1)[:, kk - 1] if len(d) else np.zeros(0)


def anomaly_auroc(known_scores: np.ndarray, unseen_scores: np.ndarray) -> float:
    """AUROC of novelty scores: the probability that an unseen sample scores higher than a known
    one (ties count half), from the same sweep the verification ROC uses."""
    score = np.r_[known_scores, unseen_scores]
    known = np.r_[np.ones(len(known_scores), bool), np.zeros(len(unseen_scores), bool)]
    return metrics.roc_auc(score, known)  # "lower is known", as lower distance is "same"


def openset_report(
    encoder,
    embeddings: np.ndarray,
    labels: np.ndarray,
    enrolled_fraction: float,
    gallery_images: int,
    fpir_targets: list[float],
    anomaly_k: int,
    seed: int,
) -> tuple[dict, dict, list[tuple[float, float, float]]]:
    """The ``openset`` and ``anomaly`` sections of metrics.json and the DET points, on these
    (test) images; a section that cannot be computed says why (``skipped``)."""

    labels = np.asarray(labels)
    try:
        split = split_enrolment(labels, enrolled_fraction, gallery_images, seed)
    except ValueError as err:
        return {"skipped": str(err)}, {"skipped": str(err)}, []
    counts = {
        "enrolled_identities": split.enrolled_identities,
        "unenrolled_identities": split.unenrolled_identities,
        "gallery_images": int(len(split.gallery)),
        "enrolled_probes": int(len(split.enrolled_probes)),
        "unenrolled_probes": int(len(split.unenrolled_probes)),
    }
    if len(split.enrolled_probes) == 0:
        why = f"no enrolled identity has more than {gallery_images} image(s) to probe with"
        return {**counts, "skipped": why}, {**counts, "skipped": why}, []
    scores = score_probes(encoder, embeddings, labels, split)
    openset: dict = dict(counts)
    for r in RANKS:
        openset[f"rank_{r}"] = float(np.mean((scores.own_rank >= 1) & (scores.own_rank <= r)))
    for target in fpir_targets:
        t = threshold_at_fpir(scores.best_distance_unenrolled, target)
        rates = rates_at(scores, t)
        openset[f"fnir_at_fpir_{target:g}"] = rates["fnir"]
        openset[f"fpir_at_fpir_{target:g}"] = rates["fpir"]  # achieved on these probes
        openset[f"threshold_at_fpir_{target:g}"] = t
    emb = np.asarray(embeddings)
    known_ref = emb[split.gallery]
    k = min(anomaly_k, len(known_ref))
    known = knn_scores(encoder, emb[split.enrolled_probes], known_ref, k)
    unseen = knn_scores(encoder, emb[split.unenrolled_probes], known_ref, k)
    anomaly = {
        "k": int(k),
        "auroc": anomaly_auroc(known, unseen),
        "known_samples": int(len(known)),
        "unseen_samples": int(len(unseen)),
    }
    return openset, anomaly, det_points(scores)
