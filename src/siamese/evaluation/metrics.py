"""Verification metrics from one sort-and-sweep over pair distances.

Distances are "lower means same identity"; a pair is accepted when ``distance <= threshold``.
Tied distances are grouped so that no threshold ever splits a tie, which is what makes these
numbers agree with scikit-learn's ``roc_curve`` exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Sweep:
    """Cumulative counts after accepting every pair with distance <= thresholds[i]."""

    thresholds: np.ndarray  # distinct distances, ascending
    tp: np.ndarray
    fp: np.ndarray
    n_pos: int
    n_neg: int

    @property
    def tpr(self) -> np.ndarray:
        return self.tp / self.n_pos if self.n_pos else np.zeros_like(self.tp, dtype=float)

    @property
    def fpr(self) -> np.ndarray:
        return self.fp / self.n_neg if self.n_neg else np.zeros_like(self.fp, dtype=float)


def sweep(distances: np.ndarray, same: np.ndarray) -> Sweep:
    d = np.asarray(distances, dtype=np.float64)
    y = np.asarray(same).astype(bool)
    if d.shape != y.shape or d.ndim != 1:
        raise ValueError("distances and labels must be 1-D arrays of equal length")
    if not np.all(np.isfinite(d)):
        raise ValueError("distances contain NaN or infinite values")
    # Sorting values (not argsort + gather) is ~2x faster; the positives' cumulative count at
    # each distinct distance then comes from a binary search in the sorted positives.
    s = np.sort(d)
    last_of_group = (
        np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1] if len(s) else np.array([], int)
    )
    thresholds = s[last_of_group]
    tp = np.searchsorted(np.sort(d[y]), thresholds, side="right")
    fp = (last_of_group + 1) - tp
    return Sweep(thresholds, tp, fp, int(y.sum()), int((~y).sum()))


def roc_curve(distances: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), starting at (0, 0) with threshold -inf (accept nothing)."""
    s = sweep(distances, same)
    fpr = np.r_[0.0, s.fpr]
    tpr = np.r_[0.0, s.tpr]
    return fpr, tpr, np.r_[-np.inf, s.thresholds]


def _auc_of(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.trapezoid(tpr, fpr))


def _eer_of(fpr: np.ndarray, tpr: np.ndarray) -> float:
    fnr = 1.0 - tpr
    diff = fnr - fpr  # decreasing from 1 to <= 0
    i = int(np.argmax(diff <= 0))
    if i == 0:
        return float(fpr[0])
    d0, d1 = diff[i - 1], diff[i]
    w = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


def _tar_of(fpr: np.ndarray, tpr: np.ndarray, far: float) -> float:
    return float(tpr[fpr <= far + 1e-12].max())


def roc_auc(distances: np.ndarray, same: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(distances, same)
    return _auc_of(fpr, tpr)


def eer(distances: np.ndarray, same: np.ndarray) -> float:
    """Equal error rate: where the false accept and false reject rates cross (interpolated)."""
    fpr, tpr, _ = roc_curve(distances, same)
    return _eer_of(fpr, tpr)


def tar_at_far(distances: np.ndarray, same: np.ndarray, far: float) -> float:
    """Highest true accept rate with false accept rate <= far."""
    fpr, tpr, _ = roc_curve(distances, same)
    return _tar_of(fpr, tpr, far)


@dataclass(frozen=True)
class RankingMetric:
    """A threshold-free metric two models can be compared on (register.promote_metric)."""

    score: Callable[[np.ndarray, np.ndarray, float], float]  # (distances, same, far) -> value
    lower_is_better: bool = False


# register.promote_metric: the config's allowed values
RANKING_METRICS: dict[str, RankingMetric] = {
    "roc_auc": RankingMetric(lambda d, y, far: roc_auc(d, y)),
    "eer": RankingMetric(lambda d, y, far: eer(d, y), lower_is_better=True),
    "tar_at_far": RankingMetric(tar_at_far),
}


def accuracy_at(distances: np.ndarray, same: np.ndarray, threshold: float) -> float:
    d = np.asarray(distances)
    return float(np.mean((d <= threshold) == np.asarray(same).astype(bool)))


def rates_at(distances: np.ndarray, same: np.ndarray, threshold: float) -> dict[str, float]:
    d = np.asarray(distances)
    y = np.asarray(same).astype(bool)
    accept = d <= threshold
    return {
        "far": float(accept[~y].mean()) if (~y).any() else 0.0,
        "frr": float((~accept[y]).mean()) if y.any() else 0.0,
    }


def verification_report(
    distances: np.ndarray, same: np.ndarray, threshold: float, far_targets: list[float]
) -> dict[str, float]:
    """Every scalar the evaluate stage reports, under stable keys for MLflow comparisons."""
    y = np.asarray(same).astype(bool)
    fpr, tpr, _ = roc_curve(distances, y)  # one sweep serves every curve metric
    report = {
        "roc_auc": _auc_of(fpr, tpr),
        "eer": _eer_of(fpr, tpr),
        "accuracy": accuracy_at(distances, y, threshold),
        "threshold": float(threshold),
        "n_pairs": int(len(y)),
        "n_positive": int(y.sum()),
        "n_negative": int((~y).sum()),
    }
    report.update(rates_at(distances, y, threshold))
    n_neg = int((~y).sum())
    for far in far_targets:
        if n_neg * far >= 1:  # at least one false accept must be representable
            report[f"tar_at_far_{far:g}"] = _tar_of(fpr, tpr, far)
    return report
