"""evaluate: score the fixed test pairs at the calibrated threshold."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from siamese import metrics
from siamese.config import Params
from siamese.embedding import split_pair_distances
from siamese.io import atomic_dir, read_json, save_npz, write_json


def _csv(header: list[str], rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def run_evaluate(
    params: Params,
    prepared_dir: str | Path,
    pairs_dir: str | Path,
    model_dir: str | Path,
    calibration_dir: str | Path,
    out_dir: str | Path,
) -> dict:
    d, y = split_pair_distances(prepared_dir, pairs_dir, model_dir, "test")
    threshold = read_json(Path(calibration_dir) / "calibration.json")["threshold"]
    report = metrics.verification_report(d, y, threshold, params.evaluate.far_targets)

    fpr, tpr, thr = metrics.roc_curve(d, y)
    roc_rows = [(f"{a:.6g}", f"{b:.6g}", f"{t:.6g}") for a, b, t in zip(fpr, tpr, thr, strict=True)]
    edges = np.histogram_bin_edges(d, bins=params.evaluate.histogram_bins)
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
        (tmp / "distance_hist.csv").write_text(_csv(["distance", "count", "pair"], hist_rows))
        save_npz(tmp / "scores.npz", distance=d, same=y.astype(np.int8))
    return report
