from collections import Counter

import numpy as np

from siamese.mining.sampler import PKBatchSampler


def test_batches_hold_p_identities_with_k_images():
    labels = np.repeat(np.arange(10), [2, 3, 10, 10, 10, 10, 10, 10, 10, 10])
    s = PKBatchSampler(labels, p=4, k=5, seed=0, batches_per_epoch=20)
    for batch in s:
        counts = Counter(labels[batch].tolist())
        assert len(counts) == 4 and set(counts.values()) == {5}


def test_deterministic_per_seed_and_epoch():
    labels = np.repeat(np.arange(6), 8)
    a = PKBatchSampler(labels, 3, 4, seed=1)
    b = PKBatchSampler(labels, 3, 4, seed=1)
    assert list(a) == list(b)
    e0 = list(a)
    a.sampler.set_epoch(1)  # the hook Lightning calls
    assert list(a) != e0


def test_ddp_ranks_get_disjoint_shares_of_the_global_batches():
    labels = np.repeat(np.arange(6), 8)
    single = PKBatchSampler(labels, 3, 4, seed=5, batches_per_epoch=8)
    r0 = PKBatchSampler(labels, 3, 4, seed=5, batches_per_epoch=8, rank=0, world_size=2)
    r1 = PKBatchSampler(labels, 3, 4, seed=5, batches_per_epoch=8, rank=1, world_size=2)
    assert len(r0) == len(r1) == 4
    glob = list(single)
    assert list(r0) == glob[0::2] and list(r1) == glob[1::2]


def test_a_k_that_no_training_identity_fills_fails_before_training():
    import pytest

    from siamese.config import Params
    from siamese.errors import DatasetError
    from siamese.training.datamodule import check_training_labels

    labels = np.repeat(np.arange(4), [2, 3, 5, 5])
    pk = Params.model_validate({"train": {"images_per_identity": 5}})
    check_training_labels(pk, labels)  # smaller identities are sampled with replacement
    too_big = Params.model_validate({"train": {"images_per_identity": 6}})
    with pytest.raises(DatasetError, match=r"train.images_per_identity \(K\) is 6.*largest has 5"):
        check_training_labels(too_big, labels)
    with pytest.raises(DatasetError, match="holds 1 identity"):
        check_training_labels(pk, np.zeros(8, int))
    offline = Params.model_validate({"train": {"images_per_identity": 6, "miner": "offline_pairs"}})
    check_training_labels(offline, labels)  # batches of mined pairs: no P x K sampler
