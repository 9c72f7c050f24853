"""Decision-threshold strategies, all read off one sort-and-sweep (``metrics.sweep``).

A pair is accepted when ``distance <= threshold``. Candidate operating points are "accept the
first i groups of tied distances" for i = 0..G; the chosen threshold is placed midway between the
last accepted distance and the next distinct one, so it never splits a tie and the operating point
on the calibration set is exactly the one the strategy chose.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from siamese.evaluation.bootstrap import bootstrap_ci
from siamese.evaluation.metrics import Sweep, sweep


def _operating_points(s: Sweep) -> tuple[np.ndarray, np.ndarray]:
    """(tp, fp) for i = 0..G accepted groups."""
    return np.r_[0, s.tp], np.r_[0, s.fp]


def _threshold_for(s: Sweep, i: int) -> float:
    """Threshold that accepts exactly the first i groups."""
    t = s.thresholds
    if len(t) == 0:
        return 0.0
    if i == 0:
        return float(t[0] - max(1e-6, abs(t[0]) * 1e-6))
    if i >= len(t):
        return float(t[-1])
    return float((t[i - 1] + t[i]) / 2)


def _max_accuracy(s: Sweep, target: float | None) -> int:
    tp, fp = _operating_points(s)
    return int(np.argmax(tp + (s.n_neg - fp)))


def _max_f1(s: Sweep, target: float | None) -> int:
    tp, fp = _operating_points(s)
    denom = 2 * tp + fp + (s.n_pos - tp)
    f1 = np.divide(2 * tp, denom, out=np.zeros(len(tp)), where=denom > 0)
    return int(np.argmax(f1))


def _eer(s: Sweep, target: float | None) -> int:
    tp, fp = _operating_points(s)
    far = fp / max(s.n_neg, 1)
    frr = 1 - tp / max(s.n_pos, 1)
    return int(np.argmin(np.abs(far - frr)))


def _target_far(s: Sweep, target: float | None) -> int:
    """Most accepts (highest TAR) whose false accept rate stays <= target."""
    _, fp = _operating_points(s)
    ok = np.flatnonzero(fp / max(s.n_neg, 1) <= target + 1e-12)
    return int(ok[-1])  # i = 0 always qualifies


def _target_frr(s: Sweep, target: float | None) -> int:
    """Fewest accepts (lowest FAR) whose false reject rate stays <= target."""
    tp, _ = _operating_points(s)
    ok = np.flatnonzero(1 - tp / max(s.n_pos, 1) <= target + 1e-12)
    return int(ok[0])  # i = G always qualifies


# calibrate.strategy: each picks an operating point of the sweep; the config's allowed values
STRATEGIES: dict[str, Callable[[Sweep, float | None], int]] = {
    "max_accuracy": _max_accuracy,
    "max_f1": _max_f1,
    "eer": _eer,
    "target_far": _target_far,
    "target_frr": _target_frr,
}


def max_accuracy_threshold(distances: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) of the max_accuracy strategy, both from one sweep."""
    s = sweep(distances, same)
    i = _max_accuracy(s, None)
    tp, fp = _operating_points(s)
    accuracy = (tp[i] + s.n_neg - fp[i]) / max(s.n_pos + s.n_neg, 1)
    return _threshold_for(s, i), float(accuracy)


def choose_threshold(
    distances: np.ndarray, same: np.ndarray, strategy: str, target: float | None = None
) -> float:
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown threshold strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}"
        )
    if strategy.startswith("target_") and target is None:
        raise ValueError(f"strategy {strategy} needs a target rate")
    s = sweep(distances, same)
    return _threshold_for(s, STRATEGIES[strategy](s, target))


def threshold_interval(
    d: np.ndarray,
    same: np.ndarray,
    strategy: str,
    target: float | None,
    n: int,
    level: float,
    seed: int,
) -> dict[str, float] | None:
    """Percentile CI of the chosen threshold over stratified resamples of the validation pairs."""
    if n == 0:
        return None
    choose = {"threshold": lambda dd, yy: choose_threshold(dd, yy, strategy, target)}
    return bootstrap_ci(d, same, choose, n, level, seed)["threshold"]
