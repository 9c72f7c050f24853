"""evaluate: score the fixed test pairs at the calibrated threshold and write the report a
verification team signs off: metrics with bootstrap CIs, k-fold accuracy, probability quality,
ROC / DET / histogram / reliability data and figures, and the hardest errors; plus the identity
benchmarks on the test images: leave-one-out retrieval (precision@1, R-precision, MAP@R) and
N-way K-shot episode accuracies with 95% CIs (siamese.evaluation.retrieval,
siamese.evaluation.oneshot)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from siamese.calibration.probability import (
    apply_probability_map,
    brier_score,
    expected_calibration_error,
    reliability,
)
from siamese.calibration.thresholds import choose_threshold
from siamese.config import Params
from siamese.data.artifacts import PreparedData, load_pairs
from siamese.evaluation import metrics
from siamese.evaluation.bootstrap import bootstrap_ci, kfold_accuracy
from siamese.evaluation.oneshot import evaluate_episodes
from siamese.evaluation.plots import write_evaluation_figures
from siamese.evaluation.retrieval import retrieval_metrics
from siamese.io import atomic_dir, read_json, save_npz, write_json
from siamese.mining.offline import RANDOM_NEGATIVE, SKILLED_FORGERY
from siamese.models.loading import embed, load_encoder, pair_distances


def _csv(header: list[str], rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _statistics(far_targets: list[float], threshold: float) -> dict:
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


def identity_benchmarks(params: Params, encoder, data: PreparedData) -> dict:
    """Retrieval and N-way K-shot episode accuracies on the test-split images (forgeries
    excluded); N is clamped to the identities available, or a setting records why it was
    skipped."""

    e = params.evaluate
    out: dict = {}
    if not e.retrieval and not (e.oneshot_episodes and e.oneshot_ways):
        return out
    idx = data.indices("test", forged=False)
    labels = data.labels[idx]
    emb = embed(encoder, data.images[idx]).astype(np.float64)
    if e.retrieval:
        out["retrieval"] = retrieval_metrics(encoder, emb, labels)
    if e.oneshot_episodes and e.oneshot_ways:
        groups = data.groups[idx] if np.any(data.groups[idx] >= 0) else None
        shots, episodes, q = e.oneshot_shots, e.oneshot_episodes, e.oneshot_queries
        oneshot = {}
        for ways in e.oneshot_ways:
            name = f"{ways}way_{shots}shot"
            oneshot[name] = evaluate_episodes(
                encoder, emb, labels, ways, shots, episodes, params.seed, queries=q
            )
            if groups is not None:
                oneshot[f"{name}_within_group"] = evaluate_episodes(
                    encoder, emb, labels, ways, shots, episodes, params.seed, groups, q
                )
        out["oneshot"] = oneshot
    return out


def run_evaluate(
    params: Params,
    prepared_dir: str | Path,
    pairs_dir: str | Path,
    model_dir: str | Path,
    calibration_dir: str | Path,
    out_dir: str | Path,
) -> dict:

    e = params.evaluate
    # loaded once: the distances and the hardest-pairs sheet both need images and pairs
    data = PreparedData(prepared_dir)
    pairs = load_pairs(Path(pairs_dir) / "test.npz")
    encoder = load_encoder(model_dir)
    d = pair_distances(encoder, data.images, pairs)
    y = pairs["y"].astype(bool)
    calibration = read_json(Path(calibration_dir) / "calibration.json")
    threshold = calibration["threshold"]
    report = metrics.verification_report(d, y, threshold, e.far_targets)
    report.update(forgery_eers(d, y, pairs["kind"]))
    report.update(identity_benchmarks(params, encoder, data))
    far_keys = [k for k in report if k.startswith("tar_at_far_")]
    fars = [f for f in e.far_targets if f"tar_at_far_{f:g}" in far_keys]
    if e.bootstrap_resamples:
        report["ci"] = bootstrap_ci(
            d, y, _statistics(fars, threshold), e.bootstrap_resamples, e.confidence, params.seed
        )
        report["ci"]["threshold"] = calibration.get("threshold_ci")
    if e.kfold > 1:
        cal = params.calibrate
        report["kfold_accuracy"] = kfold_accuracy(
            d,
            y,
            lambda dd, yy: choose_threshold(dd, yy, cal.strategy, cal.target),
            e.kfold,
            params.seed,
        )
    prob = apply_probability_map(calibration["probability"], d)
    rel = None
    if prob is not None:
        report["brier"] = brier_score(prob, y)
        report["ece"] = expected_calibration_error(prob, y, e.reliability_bins)
        rel = reliability(prob, y, e.reliability_bins)

    fpr, tpr, thr = metrics.roc_curve(d, y)
    roc_rows = [(f"{a:.6g}", f"{b:.6g}", f"{t:.6g}") for a, b, t in zip(fpr, tpr, thr, strict=True)]
    edges = np.histogram_bin_edges(d, bins=e.histogram_bins)
    pos_hist, _ = np.histogram(d[y], bins=edges)
    neg_hist, _ = np.histogram(d[~y], bins=edges)
    hist_rows = []
    for i in range(len(pos_hist)):
        centre = f"{(edges[i] + edges[i + 1]) / 2:.6g}"
        hist_rows.append((centre, int(pos_hist[i]), "positive"))
        hist_rows.append((centre, int(neg_hist[i]), "negative"))
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "metrics.json", report)
        (tmp / "roc.csv").write_text(_csv(["fpr", "tpr", "threshold"], roc_rows))
        (tmp / "det.csv").write_text(
            _csv(["far", "frr", "far_deviate", "frr_deviate", "threshold"], det_rows(d, y))
        )
        (tmp / "distance_hist.csv").write_text(_csv(["distance", "count", "pair"], hist_rows))
        rel_rows = []  # header only when no probability map is configured
        if rel is not None:
            rel_rows = [
                (f"{m:.6g}", f"{o:.6g}", int(c))
                for m, o, c in zip(
                    rel["mean_predicted"], rel["observed"], rel["count"], strict=True
                )
                if c > 0
            ]
        (tmp / "reliability.csv").write_text(
            _csv(["mean_predicted", "observed", "count"], rel_rows)
        )
        save_npz(tmp / "scores.npz", distance=d, same=y.astype(np.int8), a=pairs["a"], b=pairs["b"])
        (tmp / "figures").mkdir()
        write_evaluation_figures(
            d,
            y,
            threshold,
            tmp / "figures",
            e.histogram_bins,
            rel,
            hardest=(data.images, pairs, e.hardest_pairs),
        )
    return report
