"""calibrate: choose the decision threshold on the validation pairs (never on test pairs)."""

from __future__ import annotations

from pathlib import Path

from siamese import metrics
from siamese.config import Params
from siamese.embedding import split_pair_distances
from siamese.io import atomic_dir, write_json

STRATEGIES = {"max_accuracy": metrics.max_accuracy_threshold}


def run_calibrate(
    params: Params,
    prepared_dir: str | Path,
    pairs_dir: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
) -> dict:
    d, same = split_pair_distances(prepared_dir, pairs_dir, model_dir, "val")
    threshold, _ = STRATEGIES[params.calibrate.strategy](d, same)
    report = metrics.verification_report(d, same, threshold, params.evaluate.far_targets)
    result = {"strategy": params.calibrate.strategy, "threshold": threshold, "val": report}
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "calibration.json", result)
    return result
