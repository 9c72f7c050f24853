"""Distance -> P(same identity): a served score that means something to the people who set
policies, plus the measures of how honest that probability is (Brier score, ECE)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class ProbabilityMap(NamedTuple):
    """A ``calibrate.probability`` method: ``fit`` makes a JSON-serialisable map from validation
    distances and labels; ``apply`` turns distances into P(same) with it (None: no probability)."""

    fit: Callable[[np.ndarray, np.ndarray], dict]
    apply: Callable[[dict, np.ndarray], np.ndarray | None]


def _fit_platt(d: np.ndarray, y: np.ndarray) -> dict:
    from sklearn.linear_model import LogisticRegression  # sklearn is slow to import

    lr = LogisticRegression(C=1e6, max_iter=1000).fit(d[:, None], y)
    return {"method": "platt", "a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])}


def _apply_platt(pmap: dict, d: np.ndarray) -> np.ndarray:
    z = pmap["a"] * d + pmap["b"]
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


def _fit_isotonic(d: np.ndarray, y: np.ndarray) -> dict:
    from sklearn.isotonic import IsotonicRegression  # sklearn is slow to import

    iso = IsotonicRegression(increasing=False, out_of_bounds="clip", y_min=0.0, y_max=1.0)
    iso.fit(d, y)
    return {"method": "isotonic", "x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}


# calibrate.probability: the config's allowed values
METHODS: dict[str, ProbabilityMap] = {
    "none": ProbabilityMap(lambda d, y: {"method": "none"}, lambda pmap, d: None),
    "platt": ProbabilityMap(_fit_platt, _apply_platt),
    "isotonic": ProbabilityMap(_fit_isotonic, lambda pmap, d: np.interp(d, pmap["x"], pmap["y"])),
}


def fit_probability_map(distances: np.ndarray, same: np.ndarray, method: str) -> dict:
    """A JSON-serialisable map, fitted on the validation pairs."""
    if method not in METHODS:
        raise ValueError(
            f"unknown probability calibration {method!r}; allowed: {', '.join(METHODS)}"
        )
    d = np.asarray(distances, dtype=np.float64)
    return METHODS[method].fit(d, np.asarray(same).astype(int))


def apply_probability_map(pmap: dict, distances: np.ndarray) -> np.ndarray | None:
    """P(same) of each distance under a fitted map; None for ``none`` (or a method not known)."""
    method = METHODS.get(pmap["method"])
    return None if method is None else method.apply(pmap, np.asarray(distances, np.float64))


def brier_score(prob: np.ndarray, same: np.ndarray) -> float:
    return float(np.mean((np.asarray(prob) - np.asarray(same).astype(float)) ** 2))


def reliability(prob: np.ndarray, same: np.ndarray, bins: int = 10) -> dict[str, np.ndarray]:
    """Per equal-width bin: mean predicted probability, observed frequency and count."""
    p = np.asarray(prob, dtype=np.float64)
    y = np.asarray(same).astype(float)
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    mean_p = np.bincount(idx, weights=p, minlength=bins) / np.maximum(count, 1)
    freq = np.bincount(idx, weights=y, minlength=bins) / np.maximum(count, 1)
    return {"mean_predicted": mean_p, "observed": freq, "count": count}


def expected_calibration_error(prob: np.ndarray, same: np.ndarray, bins: int = 10) -> float:
    r = reliability(prob, same, bins)
    n = r["count"].sum()
    return float(np.sum(r["count"] / max(n, 1) * np.abs(r["mean_predicted"] - r["observed"])))
