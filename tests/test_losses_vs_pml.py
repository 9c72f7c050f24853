"""Our losses and miners against pytorch-metric-learning on the same random batches: equal loss
values, gradients and mined index sets, including edge cases."""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning import distances as pml_dist
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import reducers as pml_reducers

from siamese.distances import pairwise_distance
from siamese.losses import (
    LOSSES,
    ContrastiveLoss,
    MultiSimilarityLoss,
    NTXentLoss,
    SupConLoss,
    TripletLoss,
)
from siamese.mining.online import batch_all, batch_hard, hard_pairs, semi_hard

MEAN = pml_reducers.MeanReducer()


def _lp(power: int = 1):
    return pml_dist.LpDistance(normalize_embeddings=False, p=2, power=power)


def _batch(seed: int, b: int = 32, dim: int = 16, classes: int = 8):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, dim, generator=g, dtype=torch.float64) * 0.4
    labels = torch.randint(0, classes, (b,), generator=g)
    return emb, labels


def _grads(fn, emb):
    e = emb.clone().requires_grad_(True)
    loss = fn(e)
    loss.backward()
    return loss.detach(), e.grad


def _compare(ours_fn, theirs_fn, emb):
    l1, g1 = _grads(ours_fn, emb)
    l2, g2 = _grads(theirs_fn, emb)
    torch.testing.assert_close(l1, l2, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(g1, g2, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("margin", [0.3, 1.0])
def test_linear_contrastive_with_hard_pairs_equals_pml(seed, margin):
    emb, labels = _batch(seed)
    ours = ContrastiveLoss("hard_pairs", margin, contrastive_form="linear")
    miner = pml_miners.PairMarginMiner(pos_margin=0.0, neg_margin=margin, distance=_lp())
    theirs = pml_losses.ContrastiveLoss(
        pos_margin=0.0, neg_margin=margin, distance=_lp(), reducer=MEAN
    )
    _compare(
        lambda e: ours(e, labels)[0],
        lambda e: theirs(e, labels, miner(e, labels)),
        emb,
    )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ours_miner, pml_type", [("batch_all", "all"), ("semi_hard", "semihard")])
@pytest.mark.parametrize("soft", [False, True])
def test_triplet_with_mined_triplets_equals_pml(seed, ours_miner, pml_type, soft):
    emb, labels = _batch(seed)
    margin = 0.2
    ours = TripletLoss(ours_miner, margin, soft_margin=soft)
    miner = pml_miners.TripletMarginMiner(margin=margin, type_of_triplets=pml_type, distance=_lp())
    theirs = pml_losses.TripletMarginLoss(
        margin=margin, distance=_lp(), reducer=MEAN, smooth_loss=soft
    )
    _compare(lambda e: ours(e, labels)[0], lambda e: theirs(e, labels, miner(e, labels)), emb)


@pytest.mark.parametrize("seed", range(4))
def test_batch_hard_triplet_equals_pml(seed):
    emb, labels = _batch(seed)
    ours = TripletLoss("batch_hard", 0.3)
    miner = pml_miners.BatchHardMiner(distance=_lp())
    theirs = pml_losses.TripletMarginLoss(margin=0.3, distance=_lp(), reducer=MEAN)
    _compare(lambda e: ours(e, labels)[0], lambda e: theirs(e, labels, miner(e, labels)), emb)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("alpha, beta, base", [(2.0, 50.0, 0.5), (1.0, 10.0, 0.2)])
def test_multi_similarity_equals_pml(seed, alpha, beta, base):
    emb, labels = _batch(seed)
    ours = MultiSimilarityLoss(alpha, beta, base, pair_margin=0.1)
    theirs = pml_losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base, reducer=MEAN)
    _compare(lambda e: ours(e, labels)[0], lambda e: theirs(e, labels), emb)


# the softmax losses: PML's own defaults (SupCon averages the anchors with a positive, NT-Xent
# every positive pair), on the usual batches and on the edge cases
SOFTMAX_LABELS = {
    "random": None,
    "single-identity": torch.zeros(32, dtype=torch.long),
    "no-positives": torch.arange(32),
    "K=2": torch.arange(16).repeat_interleave(2),
}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("temperature", [0.07, 0.5])
@pytest.mark.parametrize("case", SOFTMAX_LABELS)
@pytest.mark.parametrize(
    "ours_cls, theirs_cls",
    [(SupConLoss, pml_losses.SupConLoss), (NTXentLoss, pml_losses.NTXentLoss)],
    ids=["supcon", "ntxent"],
)
def test_softmax_losses_equal_pml(seed, temperature, case, ours_cls, theirs_cls):
    emb, labels = _batch(seed)
    if SOFTMAX_LABELS[case] is not None:
        labels = SOFTMAX_LABELS[case]
    ours = ours_cls(temperature)
    theirs = theirs_cls(temperature=temperature)
    _compare(lambda e: ours(e, labels)[0], lambda e: theirs(e, labels), emb)


def _triplet_set(t):
    return set(zip(*(x.tolist() for x in t), strict=True))


@pytest.mark.parametrize("seed", range(3))
def test_mined_index_sets_equal_pml(seed):
    emb, labels = _batch(seed, b=40, classes=6)
    d = pairwise_distance(emb)
    for ours, kind in ((batch_all, "all"), (semi_hard, "semihard")):
        pml = pml_miners.TripletMarginMiner(margin=0.25, type_of_triplets=kind, distance=_lp())
        assert _triplet_set(ours(d, labels, 0.25)) == _triplet_set(pml(emb, labels))
    a, p, n = batch_hard(d, labels, 0.0)
    pa, pp, pn = pml_miners.BatchHardMiner(distance=_lp())(emb, labels)
    assert _triplet_set((a, p, n)) == _triplet_set((pa, pp, pn))
    (pi, pj), (ni, nj) = hard_pairs(d, labels, 0.5)
    a1, p1, a2, n2 = pml_miners.PairMarginMiner(0.0, 0.5, distance=_lp())(emb, labels)
    unordered = lambda x, y: {tuple(sorted(t)) for t in zip(x.tolist(), y.tolist(), strict=True)}  # noqa: E731
    assert unordered(pi, pj) == unordered(a1, p1)
    assert unordered(ni, nj) == unordered(a2, n2)


@pytest.mark.parametrize(
    "labels",
    [
        torch.zeros(8, dtype=torch.long),  # a single identity: no negatives
        torch.arange(8),  # no positives in the batch
        torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]),  # K = 2
    ],
    ids=["single-identity", "no-positives", "K=2"],
)
@pytest.mark.parametrize("loss, miner", [("triplet", "batch_all"), ("triplet", "batch_hard")])
def test_edge_cases_match_pml(labels, loss, miner):
    emb, _ = _batch(9, b=8)
    ours = LOSSES[loss](miner, 0.2)
    pml_miner = (
        pml_miners.BatchHardMiner(distance=_lp())
        if miner == "batch_hard"
        else pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="all", distance=_lp())
    )
    theirs = pml_losses.TripletMarginLoss(margin=0.2, distance=_lp(), reducer=MEAN)
    _compare(lambda e: ours(e, labels)[0], lambda e: theirs(e, labels, pml_miner(e, labels)), emb)


def test_tied_distances_give_pml_equal_loss():
    # four copies of two points: every positive distance is 0, every negative distance ties
    emb = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    ours = ContrastiveLoss("hard_pairs", 1.5, contrastive_form="linear")
    miner = pml_miners.PairMarginMiner(pos_margin=0.0, neg_margin=1.5, distance=_lp())
    theirs = pml_losses.ContrastiveLoss(
        pos_margin=0.0, neg_margin=1.5, distance=_lp(), reducer=MEAN
    )
    l1 = ours(emb, labels)[0]
    l2 = theirs(emb, labels, miner(emb, labels))
    torch.testing.assert_close(l1, l2)
