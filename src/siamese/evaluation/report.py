"""The evaluation report's pieces that are pure functions of the test distances: the statistics
behind its confidence intervals, the skilled-forgery EERs, and its CSV tables (ROC, DET,
histogram, reliability), so the evaluate stage only wires and writes them."""

from __future__ import annotations

import csv
import io

import numpy as np

from siamese.evaluation import metrics
from siamese.mining.offline import RANDOM_NEGATIVE, SKILLED_FORGERY


def _csv(header: list[str], rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def verification_statistics(far_targets: list[float], threshold: float) -> dict:
    """The statistics bootstrapped for the report's CIs, by their metrics.json key."""
    stats = {
        "roc_auc": metrics.roc_auc,
        "eer": metrics.eer,
        "accuracy": lambda d, y: metrics.accuracy_at(d, y, threshold),
    }
    for far in far_targets:
        stats[f"tar_at_far_{far:g}"] = lambda d, y, far=far: metrics.tar_at_far(d, y, far)
    return stats


def det_rows(d: np.ndarray, y: np.ndarray) -> list[tuple]:
    """DET curve points (FAR, FRR) and their normal deviates, the axes DET plots use."""
    from scipy.stats import norm  # lazy: scipy is slow to import

    fpr, tpr, thr = metrics.roc_curve(d, y)
    frr = 1 - tpr
    eps = 1e-6
    rows = []
    for a, b, t in zip(fpr[1:], frr[1:], thr[1:], strict=True):
        za, zb = norm.ppf(np.clip([a, b], eps, 1 - eps))
        rows.append((f"{a:.6g}", f"{b:.6g}", f"{za:.6g}", f"{zb:.6g}", f"{t:.6g}"))
    return rows


def openset_det_table(points: list[tuple[float, float, float]]) -> str:
    """The open-set DET curve (FNIR against FPIR, siamese.evaluation.openset.det_points) as CSV,
    with the normal deviates DET plots use (header only when open-set was skipped)."""
    from scipy.stats import norm  # lazy: scipy is slow to import

    eps = 1e-6
    rows = []
    for fpir, fnir, t in points:
        za, zb = norm.ppf(np.clip([fpir, fnir], eps, 1 - eps))
        rows.append((f"{fpir:.6g}", f"{fnir:.6g}", f"{za:.6g}", f"{zb:.6g}", f"{t:.6g}"))
    return _csv(["fpir", "fnir", "fpir_deviate", "fnir_deviate", "threshold"], rows)


def forgery_eers(d: np.ndarray, y: np.ndarray, kind: np.ndarray) -> dict[str, float]:
    """EER of genuine pairs against skilled-forgery negatives and against random negatives,
    when the test pairs hold skilled forgeries (signature data)."""
    if not np.any(kind == SKILLED_FORGERY):
        return {}
    out = {}
    genuine = y & (kind == 0)
    for name, k in (
        ("eer_skilled_forgery", SKILLED_FORGERY),
        ("eer_random_forgery", RANDOM_NEGATIVE),
    ):
        neg = ~y & (kind == k)
        if genuine.any() and neg.any():
            keep = genuine | neg
            out[name] = metrics.eer(d[keep], y[keep])
    return out


def report_tables(
    d: np.ndarray, y: np.ndarray, histogram_bins: int, rel: dict | None
) -> dict[str, str]:
    """The report's CSV files by name (DVC plots): ROC, DET, distance histogram per class and
    the reliability diagram (header only when no probability map is configured)."""
    fpr, tpr, thr = metrics.roc_curve(d, y)
    roc_rows = [(f"{a:.6g}", f"{b:.6g}", f"{t:.6g}") for a, b, t in zip(fpr, tpr, thr, strict=True)]
    edges = np.histogram_bin_edges(d, bins=histogram_bins)
    pos_hist, _ = np.histogram(d[y], bins=edges)
    neg_hist, _ = np.histogram(d[~y], bins=edges)
    hist_rows = []
    for i in range(len(pos_hist)):
        centre = f"{(edges[i] + edges[i + 1]) / 2:.6g}"
        hist_rows.append((centre, int(pos_hist[i]), "positive"))
        hist_rows.append((centre, int(neg_hist[i]), "negative"))
    rel_rows = []
    if rel is not None:
        rel_rows = [
            (f"{m:.6g}", f"{o:.6g}", int(c))
            for m, o, c in zip(rel["mean_predicted"], rel["observed"], rel["count"], strict=True)
            if c > 0
        ]
    return {
        "roc.csv": _csv(["fpr", "tpr", "threshold"], roc_rows),
        "det.csv": _csv(["far", "frr", "far_deviate", "frr_deviate", "threshold"], det_rows(d, y)),
        "distance_hist.csv": _csv(["distance", "count", "pair"], hist_rows),
        "reliability.csv": _csv(["mean_predicted", "observed", "count"], rel_rows),
    }
