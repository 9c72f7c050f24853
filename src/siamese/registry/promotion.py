"""The promotion rule: which metric decides (register.promote_metric), in which direction, and how
a registered version is scored on the benchmark pairs through its served interface, so the
challenger and the champion are compared on equal terms."""

from __future__ import annotations

import numpy as np

from siamese.config import Params
from siamese.evaluation import metrics
from siamese.registry.client import pairs_frame
from siamese.registry.loading import load_pyfunc


def metric_key(params: Params) -> str:
    """The key of the promotion metric in evaluate's metrics.json (and ``test.<key>`` on runs)."""
    r = params.register
    return f"tar_at_far_{r.promote_far:g}" if r.promote_metric == "tar_at_far" else r.promote_metric


def score(params: Params, distances: np.ndarray, same: np.ndarray) -> float:
    """The promotion metric of distances on pairs (higher or lower is better: see improvement)."""
    r = params.register
    return metrics.RANKING_METRICS[r.promote_metric].score(distances, same, r.promote_far)


def improvement(params: Params, challenger: float, champion: float) -> float:
    """How much better the challenger is, in the metric's better direction (> 0: better)."""
    diff = challenger - champion
    lower_is_better = metrics.RANKING_METRICS[params.register.promote_metric].lower_is_better
    return -diff if lower_is_better else diff


def benchmark_score(params: Params, name: str, version: str, images, pairs) -> tuple[float, str]:
    """The version's promotion metric on the benchmark pairs, scored through its served pyfunc,
    and the model digest of the files that were scored (checked against the digest recorded at
    registration before they were loaded: what was evaluated is what was registered)."""
    model, digest = load_pyfunc(f"models:/{name}/{version}")
    out = model.predict(pairs_frame(images, pairs["a"], pairs["b"]))
    return score(params, out["distance"].to_numpy(dtype=np.float64), pairs["y"]), digest
