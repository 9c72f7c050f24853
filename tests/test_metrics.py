import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from siamese.calibration.thresholds import max_accuracy_threshold
from siamese.evaluation import metrics


def _cases():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    yield "continuous", rng.normal(size=500) + y * 1.0, y
    yield "heavy ties", np.round(rng.normal(size=500) + y, 1), y
    yield "all equal", np.zeros(200), rng.integers(0, 2, 200)


@pytest.mark.parametrize("name, scores, y", list(_cases()))
def test_roc_matches_sklearn(name, scores, y):
    distances = -scores  # our convention: lower distance = same identity
    fpr, tpr, _ = metrics.roc_curve(distances, y)
    sk_fpr, sk_tpr, _ = sk_roc_curve(y, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)
    assert metrics.roc_auc(distances, y) == pytest.approx(roc_auc_score(y, scores), abs=1e-9)


def test_eer_and_tar_on_a_hand_built_case():
    d = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    y = np.array([1, 1, 1, 0, 1, 0, 0, 0])
    assert metrics.eer(d, y) == pytest.approx(0.25)
    assert metrics.tar_at_far(d, y, 0.0) == pytest.approx(0.75)
    assert metrics.tar_at_far(d, y, 0.25) == pytest.approx(1.0)


def test_max_accuracy_threshold_never_splits_a_tie():
    d = np.array([0.1, 0.2, 0.2, 0.2, 0.9])
    y = np.array([1, 1, 0, 1, 0])
    thr, acc = max_accuracy_threshold(d, y)
    assert acc == pytest.approx(0.8)
    assert 0.2 < thr < 0.9
    assert metrics.accuracy_at(d, y, thr) == pytest.approx(acc)


def test_perfect_separation():
    d = np.array([0.1, 0.2, 0.8, 0.9])
    y = np.array([1, 1, 0, 0])
    thr, acc = max_accuracy_threshold(d, y)
    assert acc == 1.0 and 0.2 < thr < 0.8
    assert metrics.roc_auc(d, y) == 1.0 and metrics.eer(d, y) == 0.0


def test_report_omits_far_targets_without_enough_negatives():
    d = np.linspace(0, 1, 100)
    y = (d < 0.5).astype(int)
    rep = metrics.verification_report(d, y, 0.5, [1e-2, 1e-3])
    assert "tar_at_far_0.01" not in rep  # 50 negatives cannot resolve FAR=1%
    rep = metrics.verification_report(d, y, 0.5, [0.1])
    assert rep["tar_at_far_0.1"] == 1.0
