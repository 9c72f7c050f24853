import numpy as np

from siamese.mining.offline import balanced_pairs, skilled_forgery_pairs


def test_pairs_are_balanced_unique_and_correctly_labelled():
    labels = np.repeat(np.arange(5), 10)
    idx = np.arange(50)
    p = balanced_pairs(idx, labels, 200, seed=0)
    assert len(p["y"]) == 200 and p["y"].sum() == 100
    same = labels[p["a"]] == labels[p["b"]]
    assert np.array_equal(same, p["y"].astype(bool))
    assert np.all(p["a"] != p["b"])
    keys = set(zip(np.minimum(p["a"], p["b"]), np.maximum(p["a"], p["b"]), strict=True))
    assert len(keys) == 200


def test_pairs_are_seeded_and_stay_inside_the_split():
    labels = np.repeat(np.arange(6), 8)
    split = np.arange(16, 48)
    a = balanced_pairs(split, labels, 100, seed=3)
    b = balanced_pairs(split, labels, 100, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert set(a["a"]) | set(a["b"]) <= set(split)


def test_impossible_request_is_explained():
    import pytest

    labels = np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match="cannot draw"):
        balanced_pairs(np.arange(4), labels, 20, seed=0)


def test_skilled_forgery_pairs_pair_a_writer_genuine_with_forged():
    import pytest

    labels = np.repeat(np.arange(4), 6)  # 4 writers, 3 genuine + 3 forged each
    forged = np.tile([False, False, False, True, True, True], 4)
    split = np.arange(6, 24)  # writers 1..3
    p = skilled_forgery_pairs(split, labels, forged, 20, seed=0)
    assert p.shape == (20, 2) and len({tuple(r) for r in p}) == 20
    assert np.all(labels[p[:, 0]] == labels[p[:, 1]])
    assert not forged[p[:, 0]].any() and forged[p[:, 1]].all()
    assert set(p.ravel()) <= set(split)
    assert np.array_equal(p, skilled_forgery_pairs(split, labels, forged, 20, seed=0))
    with pytest.raises(ValueError, match="only 27"):
        skilled_forgery_pairs(split, labels, forged, 28, seed=0)
