"""Threshold strategies, probability calibration and bootstrap intervals."""

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import brier_score_loss
from sklearn.metrics import roc_curve as sk_roc_curve

from siamese.calibration.probability import (
    apply_probability_map,
    brier_score,
    expected_calibration_error,
    fit_probability_map,
)
from siamese.calibration.thresholds import choose_threshold
from siamese.evaluation import metrics
from siamese.evaluation.bootstrap import bootstrap_ci, kfold_accuracy

# distances with a tie at 0.4 that mixes a positive and a negative
D = np.array([0.1, 0.2, 0.3, 0.4, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
Y = np.array([1, 1, 1, 1, 0, 1, 0, 0, 0, 0])


@pytest.mark.parametrize(
    "strategy, target, expected",
    [
        # accepting up to 0.5 gets 9/10 right (only the tied negative is wrong)
        ("max_accuracy", None, 0.55),
        ("max_f1", None, 0.55),
        # FAR 0 is only reachable before the tie: accept 0.1..0.3
        ("target_far", 0.1, 0.35),
        # FRR <= 0.2 needs 4 of 5 positives: the tie group must be accepted whole
        ("target_frr", 0.2, 0.45),
        ("eer", None, 0.45),
    ],
)
def test_strategies_return_the_documented_threshold(strategy, target, expected):
    thr = choose_threshold(D, Y, strategy, target)
    assert thr == pytest.approx(expected)
    assert not np.any(D == thr)  # never on a tie


def test_target_far_is_respected_on_the_calibration_set():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 5000).astype(bool)
    d = rng.normal(size=5000) + (~y) * 2
    for far in (1e-3, 1e-2, 0.1):
        thr = choose_threshold(d, y, "target_far", far)
        assert np.mean(d[~y] <= thr) <= far
        frr = choose_threshold(d, y, "target_frr", far)
        assert np.mean(d[y] > frr) <= far


def test_accept_nothing_and_accept_everything_edges():
    d = np.array([0.5, 0.5, 0.5])
    y = np.array([0, 0, 0])
    assert choose_threshold(d, y, "max_accuracy") < 0.5  # rejecting all is right
    y = np.array([1, 1, 1])
    assert choose_threshold(d, y, "max_accuracy") >= 0.5


@pytest.mark.parametrize("seed", range(3))
def test_tar_at_far_and_eer_agree_with_sklearn_roc(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 3000)
    d = np.round(rng.normal(size=3000) - y, 2)  # heavy ties
    fpr, tpr, _ = sk_roc_curve(y, -d, drop_intermediate=False)
    for far in (1e-3, 1e-2, 0.1):
        assert metrics.tar_at_far(d, y, far) == pytest.approx(tpr[fpr <= far].max(), abs=1e-9)
    fnr = 1 - tpr
    i = np.argmax(fnr - fpr <= 0)
    lo, hi = sorted([fpr[i - 1], fpr[i]])
    assert lo - 1e-9 <= metrics.eer(d, y) <= hi + 1e-9


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_probability_maps_are_calibrated_and_decreasing(method):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 4000).astype(bool)
    d = np.abs(rng.normal(size=4000) * 0.3 + np.where(y, 0.3, 1.0))
    pmap = fit_probability_map(d[:2000], y[:2000], method)
    grid = np.linspace(0, 2, 50)
    p = apply_probability_map(pmap, grid)
    assert np.all(np.diff(p) <= 1e-12) and p[0] > 0.9 and p[-1] < 0.1
    test_p = apply_probability_map(pmap, d[2000:])
    assert brier_score(test_p, y[2000:]) == pytest.approx(brier_score_loss(y[2000:], test_p))
    assert expected_calibration_error(test_p, y[2000:]) < 0.05


def test_ece_of_a_known_miscalibration():
    p = np.full(1000, 0.9)
    y = np.r_[np.ones(600), np.zeros(400)]
    assert expected_calibration_error(p, y) == pytest.approx(0.3)


def test_bootstrap_interval_covers_the_true_auc_at_about_the_nominal_rate():
    true_auc = norm.cdf(1 / np.sqrt(2))  # positives ~ N(0,1), negatives ~ N(1,1) distances
    rng = np.random.default_rng(7)
    hits, trials = 0, 60
    for t in range(trials):
        d = np.r_[rng.normal(0, 1, 150), rng.normal(1, 1, 150)]
        y = np.r_[np.ones(150, bool), np.zeros(150, bool)]
        ci = bootstrap_ci(d, y, {"auc": metrics.roc_auc}, n_resamples=200, seed=t)["auc"]
        hits += ci["low"] <= true_auc <= ci["high"]
    assert 0.83 <= hits / trials <= 1.0  # nominal 0.95; binomial noise over 60 trials


def test_kfold_accuracy_reports_mean_and_spread():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 600).astype(bool)
    d = rng.normal(size=600) + (~y) * 3
    out = kfold_accuracy(d, y, lambda dd, yy: choose_threshold(dd, yy, "max_accuracy"), 10)
    assert out["folds"] == 10 and 0.9 < out["mean"] <= 1.0 and out["std"] < 0.1
