"""Bootstrap confidence intervals: a test metric without its uncertainty invites over-reading a
0.3-point difference between two models scored on a few thousand pairs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from siamese.output import progress


def bootstrap_ci(
    distances: np.ndarray,
    same: np.ndarray,
    statistics: dict[str, Callable[[np.ndarray, np.ndarray], float]],
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Percentile intervals, resampling positives and negatives separately (stratified) so every
    resample keeps the class balance the metrics are defined on."""
    d = np.asarray(distances, dtype=np.float64)
    y = np.asarray(same).astype(bool)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {k: [] for k in statistics}
    # the longest part of evaluate and calibrate on large pair sets: a bar on a terminal, else
    # a line every 30 s
    for _ in progress(range(n_resamples), "bootstrap resamples"):
        idx = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        for name, fn in statistics.items():
            values[name].append(fn(d[idx], y[idx]))
    alpha = (1 - level) / 2
    out = {}
    for name, vals in values.items():
        arr = np.asarray(vals)
        out[name] = {
            "low": float(np.quantile(arr, alpha)),
            "high": float(np.quantile(arr, 1 - alpha)),
            "std": float(arr.std()),
        }
    return out


def kfold_accuracy(
    distances: np.ndarray,
    same: np.ndarray,
    choose: Callable[[np.ndarray, np.ndarray], float],
    folds: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """The LFW protocol: choose the threshold on k-1 folds, score accuracy on the held-out fold."""
    d = np.asarray(distances, dtype=np.float64)
    y = np.asarray(same).astype(bool)
    order = np.random.default_rng(seed).permutation(len(d))
    accs = []
    for part in np.array_split(order, folds):
        train = np.setdiff1d(order, part, assume_unique=True)
        thr = choose(d[train], y[train])
        accs.append(float(np.mean((d[part] <= thr) == y[part])))
    return {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "folds": folds}
