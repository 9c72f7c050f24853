"""calibrate: choose the decision threshold on the validation pairs (never on test pairs)."""

from __future__ import annotations

from pathlib import Path

from siamese import metrics
from siamese.config import Params
from siamese.datamodule import load_pairs
from siamese.embedding import load_encoder, pair_distances
from siamese.io import atomic_dir, write_json
from siamese.stages.prepare import PreparedData

STRATEGIES = {"max_accuracy": metrics.max_accuracy_threshold}


def run_calibrate(
    params: Params,
    prepared_dir: str | Path,
    pairs_dir: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
) -> dict:
    data = PreparedData(prepared_dir)
    pairs = load_pairs(Path(pairs_dir) / "val.npz")
    d = pair_distances(load_encoder(model_dir), data.images, pairs)
    threshold, _ = STRATEGIES[params.calibrate.strategy](d, pairs["y"])
    report = metrics.verification_report(d, pairs["y"], threshold, params.evaluate.far_targets)
    result = {"strategy": params.calibrate.strategy, "threshold": threshold, "val": report}
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "calibration.json", result)
    return result
