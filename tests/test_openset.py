"""Open-set identification and kNN novelty metrics (siamese.evaluation.openset) against their
NIST FRVT definitions, computed here a second way (loops over probes), on synthetic embeddings;
and the evaluate stage's openset / anomaly sections, DET table and figure on a real run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from siamese.config import validate_params
from siamese.errors import ParamsError
from siamese.evaluation.openset import (
    anomaly_auroc,
    knn_scores,
    openset_report,
    rates_at,
    score_probes,
    split_enrolment,
    threshold_at_false_alarm,
    threshold_at_fpir,
)


def _clusters(n_ids: int, per_id: int, spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, 8)) * 3
    labels = np.repeat(np.arange(n_ids), per_id)
    emb = centres[labels] + rng.normal(scale=spread, size=(len(labels), 8))
    return emb, labels


def test_split_is_seeded_disjoint_and_keeps_gallery_images_per_identity():
    _, labels = _clusters(10, 6, 1.0)
    a = split_enrolment(labels, 0.4, 2, seed=3)
    b = split_enrolment(labels, 0.4, 2, seed=3)
    pairs = zip(a.__dict__.values(), b.__dict__.values(), strict=True)
    assert all(np.array_equal(x, y) for x, y in pairs)
    assert (a.enrolled_identities, a.unenrolled_identities) == (4, 6)
    g, p, u = set(a.gallery), set(a.enrolled_probes), set(a.unenrolled_probes)
    assert not (g & p or g & u or p & u) and len(g | p | u) == len(labels)
    _, per = np.unique(labels[a.gallery], return_counts=True)
    assert list(per) == [2, 2, 2, 2]
    assert set(labels[a.unenrolled_probes]).isdisjoint(labels[a.gallery])
    assert set(labels[a.enrolled_probes]) == set(labels[a.gallery])
    c = split_enrolment(labels, 0.4, 2, seed=4)
    assert not np.array_equal(a.gallery, c.gallery)
    # at least one identity on each side, whatever the fraction
    assert split_enrolment(labels[:12], 0.99, 1, 0).unenrolled_identities == 1
    with pytest.raises(ValueError, match="two or more identities"):
        split_enrolment(np.zeros(5), 0.5, 1, 0)


def test_threshold_at_fpir_never_splits_a_tie_and_meets_the_target():
    s = np.array([0.1, 0.2, 0.2, 0.3, 0.5, 0.5, 0.5, 0.7, 0.9, 1.0])
    for target in (0.01, 0.1, 0.25, 0.3, 0.5, 0.65, 0.95):
        t = threshold_at_fpir(s, target)
        assert np.mean(s <= t) <= target + 1e-12
        # the largest such threshold: the next impostor up would break the target
        above = s[s > t]
        if len(above):
            assert np.mean(s <= above.min()) > target
    assert threshold_at_fpir(s, 0.01) < 0.1
    t = threshold_at_false_alarm(s, 0.2)  # alarm when score > t
    assert np.mean(s > t) <= 0.2 and np.mean(s >= s[s < t].max()) > 0.2


def _reference_rates(emb, labels, split, t):
    """FPIR / FNIR / rank-k by the definitions, one probe at a time."""
    g = split.gallery
    fp = 0
    for i in split.unenrolled_probes:
        fp += np.linalg.norm(emb[g] - emb[i], axis=1).min() <= t
    fn, rank1, rank5 = 0, 0, 0
    for i in split.enrolled_probes:
        d = np.linalg.norm(emb[g] - emb[i], axis=1)
        best = {}
        for j, dist in zip(g, d, strict=True):
            best[labels[j]] = min(best.get(labels[j], np.inf), dist)
        ranked = sorted(best, key=lambda k: (best[k], k))
        ok = ranked[0] == labels[i]
        fn += not (ok and best[ranked[0]] <= t)
        rank1 += ok
        rank5 += labels[i] in ranked[:5]
    n_e, n_u = len(split.enrolled_probes), len(split.unenrolled_probes)
    return fp / n_u, fn / n_e, rank1 / n_e, rank5 / n_e


@pytest.mark.parametrize("spread", [0.3, 2.5])
def test_fnir_fpir_and_ranks_match_their_definitions(spread):
    emb, labels = _clusters(16, 5, spread, seed=1)
    report, anomaly, det = openset_report("euclidean", emb, labels, 0.5, 2, [0.01, 0.1], 1, 7)
    split = split_enrolment(labels, 0.5, 2, 7)
    assert report["enrolled_probes"] == 8 * 3 and report["unenrolled_probes"] == 8 * 5
    scores = score_probes("euclidean", emb, labels, split)
    for target in (0.01, 0.1):
        t = report[f"threshold_at_fpir_{target:g}"]
        fpir, fnir, r1, r5 = _reference_rates(emb, labels, split, t)
        assert report[f"fnir_at_fpir_{target:g}"] == pytest.approx(fnir)
        assert report[f"fpir_at_fpir_{target:g}"] == pytest.approx(fpir) and fpir <= target
        assert rates_at(scores, t) == pytest.approx({"fpir": fpir, "fnir": fnir})
    assert report["rank_1"] == pytest.approx(r1) and report["rank_5"] == pytest.approx(r5)
    # DET: FPIR rises, FNIR falls, from (0, 1)
    fp, fn = np.array([p[0] for p in det]), np.array([p[1] for p in det])
    assert det[0][:2] == (0.0, 1.0) and np.all(np.diff(fp) >= 0) and np.all(np.diff(fn) <= 0)
    if spread < 1:  # well separated people: identified, and strangers told apart
        assert report["rank_1"] == 1.0 and report["fnir_at_fpir_0.01"] == 0.0
        assert anomaly["auroc"] == 1.0
    else:  # heavily overlapping ones: a real error rate
        assert report["fnir_at_fpir_0.01"] > 0.2 and anomaly["auroc"] < 0.95


def test_knn_novelty_is_the_kth_nearest_known_distance_and_its_auroc():
    rng = np.random.default_rng(0)
    known = rng.normal(size=(50, 4))
    q = rng.normal(size=(7, 4))
    d = np.linalg.norm(q[:, None] - known[None], axis=2)
    for k in (1, 3):
        np.testing.assert_allclose(knn_scores("euclidean", q, known, k), np.sort(d, 1)[:, k - 1])
    assert knn_scores("euclidean", q, known[:2], 5).shape == (7,)  # k clamped to what exists
    assert anomaly_auroc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert anomaly_auroc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    assert anomaly_auroc(np.array([0.1, 0.3]), np.array([0.2, 0.4])) == pytest.approx(0.75)


def test_too_few_identities_is_skipped_with_the_reason():
    emb, labels = _clusters(1, 5, 1.0)
    report, anomaly, det = openset_report("euclidean", emb, labels, 0.5, 1, [0.01], 1, 0)
    assert "two or more identities" in report["skipped"] and det == []
    emb, labels = _clusters(4, 1, 1.0)
    report, _, _ = openset_report("euclidean", emb, labels, 0.5, 1, [0.01], 1, 0)
    assert "no enrolled identity has more than 1 image" in report["skipped"]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"fpir_targets": [0.0]}, "identify.fpir_targets"),
        ({"fpir_targets": [0.1, 0.1]}, "distinct"),
        ({"target_fpir": 1.5}, "identify.target_fpir"),
        ({"enrolled_fraction": 1.0}, "identify.enrolled_fraction"),
        ({"anomaly_k": 0}, "identify.anomaly_k"),
        ({"gallery_imgs": 2}, "unknown key"),
    ],
)
def test_identify_params_are_validated_naming_the_key(section, message):
    with pytest.raises(ParamsError, match=message):
        validate_params({"identify": section})


def test_evaluate_writes_openset_and_anomaly_metrics_det_table_and_figure(project, monkeypatch):
    """The digits run of the fast params: 2 test identities, one enrolled."""
    from siamese import paths
    from siamese.config import load_params
    from siamese.params_file import set_params
    from tests.helpers.params import QUICK
    from tests.helpers.stages import run_stages_until_evaluate

    extra = ["train.max_epochs=2", "data.test_fraction=0.4", "identify.gallery_images=5"]
    set_params(project / "params.yaml", [*QUICK, *extra])
    report = run_stages_until_evaluate(load_params(project / "params.yaml"))
    written = json.loads((paths.EVALUATION / "metrics.json").read_text())
    o, a = written["openset"], written["anomaly"]
    assert o == report["openset"] and o["enrolled_identities"] == 2
    assert o["unenrolled_identities"] == 2 and o["gallery_images"] == 10
    assert 0 <= o["fnir_at_fpir_0.01"] <= 1 and o["fpir_at_fpir_0.01"] <= 0.01
    assert o["fnir_at_fpir_0.1"] <= o["fnir_at_fpir_0.01"]
    assert o["rank_5"] == 1.0 >= o["rank_1"]  # two enrolled: the own identity is in the top 5
    assert 0 <= a["auroc"] <= 1 and a["k"] == 1 and a["unseen_samples"] == o["unenrolled_probes"]
    # the same numbers again from the exported model and the prepared test images
    from siamese.data.artifacts import PreparedData
    from siamese.models.loading import embed, load_encoder

    data, enc = PreparedData(paths.PREPARED), load_encoder(paths.TRAIN)
    idx = data.indices("test", forged=False)
    emb = embed(enc, data.images, indices=idx).astype(np.float64)
    again = openset_report(enc, emb, data.labels[idx], 0.5, 5, [0.01, 0.1], 1, 42)
    assert json.loads(json.dumps(again[:2])) == [o, a]
    rows = (paths.EVALUATION / "openset_det.csv").read_text().splitlines()
    assert rows[0] == "fpir,fnir,fpir_deviate,fnir_deviate,threshold" and len(rows) > 10
    assert (paths.EVALUATION / "figures" / "openset_det.png").stat().st_size > 1000
