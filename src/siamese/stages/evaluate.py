"""evaluate: score the fixed test pairs at the calibrated threshold and write the report a
verification team signs off: metrics with bootstrap CIs, k-fold accuracy, probability quality,
ROC / DET / histogram / reliability data and figures, and the hardest errors; plus the identity
benchmarks on the test images: leave-one-out retrieval (precision@1, R-precision, MAP@R) and
N-way K-shot episode accuracies with 95% CIs (siamese.evaluation.retrieval,
siamese.evaluation.oneshot), and open-set 1:N identification (rank-1/5, FNIR at FPIR, the open-set
DET) with the kNN-novelty AUROC of known against unseen identities (siamese.evaluation.openset)."""

from __future__ import annotations

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
from siamese.data.artifacts import PreparedData, load_pairs, pairs_path
from siamese.evaluation import metrics
from siamese.evaluation.bootstrap import bootstrap_ci, kfold_accuracy
from siamese.evaluation.oneshot import evaluate_episodes
from siamese.evaluation.openset import openset_report
from siamese.evaluation.plots import openset_det_figure, write_evaluation_figures
from siamese.evaluation.report import (
    forgery_eers,
    openset_det_table,
    report_tables,
    verification_statistics,
)
from siamese.evaluation.retrieval import retrieval_metrics
from siamese.io import atomic_dir, read_json, save_npz, write_json
from siamese.models.loading import embed, load_encoder, pair_distances


def identity_benchmarks(
    params: Params, encoder, data: PreparedData
) -> tuple[dict, list[tuple[float, float, float]]]:
    """Retrieval, N-way K-shot episode accuracies and open-set identification on the test-split
    images (forgeries excluded); N is clamped to the identities available, or a setting records
    why it was skipped. Also the open-set DET points (FPIR, FNIR, threshold)."""

    e, ident = params.evaluate, params.identify
    out: dict = {}
    idx = data.indices("test", forged=False)
    labels = data.labels[idx]
    emb = embed(encoder, data.images, indices=idx).astype(np.float64)
    out["openset"], out["anomaly"], det = openset_report(
        encoder,
        emb,
        labels,
        ident.enrolled_fraction,
        ident.gallery_images,
        ident.fpir_targets,
        ident.anomaly_k,
        params.seed,
    )
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
    return out, det


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
    pairs = load_pairs(pairs_path(pairs_dir, "test"))
    encoder = load_encoder(model_dir)
    d = pair_distances(encoder, data.images, pairs)
    y = pairs["y"].astype(bool)
    calibration = read_json(Path(calibration_dir) / "calibration.json")
    threshold = calibration["threshold"]
    report = metrics.verification_report(d, y, threshold, e.far_targets)
    report.update(forgery_eers(d, y, pairs["kind"]))
    identification, openset_det = identity_benchmarks(params, encoder, data)
    report.update(identification)
    far_keys = [k for k in report if k.startswith("tar_at_far_")]
    fars = [f for f in e.far_targets if f"tar_at_far_{f:g}" in far_keys]
    if e.bootstrap_resamples:
        report["ci"] = bootstrap_ci(
            d,
            y,
            verification_statistics(fars, threshold),
            e.bootstrap_resamples,
            e.confidence,
            params.seed,
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

    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "metrics.json", report)
        for name, text in report_tables(d, y, e.histogram_bins, rel).items():
            (tmp / name).write_text(text)
        (tmp / "openset_det.csv").write_text(openset_det_table(openset_det))
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
        if openset_det:
            openset_det_figure(openset_det, report["openset"], tmp / "figures" / "openset_det.png")
    return report
