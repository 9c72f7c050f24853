"""calibrate: choose the decision threshold (and the distance -> probability map) on the
validation pairs, never on test pairs, with a bootstrap interval for the threshold."""

from __future__ import annotations

from pathlib import Path

from siamese.calibration.probability import fit_probability_map
from siamese.calibration.thresholds import choose_threshold, threshold_interval
from siamese.config import Params
from siamese.evaluation import metrics
from siamese.io import atomic_dir, write_json
from siamese.models.loading import split_pair_distances


def run_calibrate(
    params: Params,
    prepared_dir: str | Path,
    pairs_dir: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
) -> dict:
    c = params.calibrate
    d, same = split_pair_distances(prepared_dir, pairs_dir, model_dir, "val")
    threshold = choose_threshold(d, same, c.strategy, c.target)
    result = {
        "strategy": c.strategy,
        "target": c.target,
        "threshold": threshold,
        "threshold_ci": threshold_interval(
            d, same, c.strategy, c.target, c.bootstrap_resamples, c.confidence, params.seed
        ),
        "probability": fit_probability_map(d, same, c.probability),
        "val": metrics.verification_report(d, same, threshold, params.evaluate.far_targets),
    }
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "calibration.json", result)
    return result
