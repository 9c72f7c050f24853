import numpy as np
import pytest
import torch

from siamese.config import TrainParams
from siamese.distances import pairwise_euclidean
from siamese.losses import LOSSES, ContrastiveLoss, MultiSimilarityLoss, TripletLoss, build_loss
from siamese.mining.online import batch_all, batch_hard, hard_pairs


def _batch(seed=0, b=24, dim=8, classes=4):
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(b, dim, generator=g), dim=1)
    labels = torch.arange(b) % classes
    return emb.requires_grad_(True), labels


def test_distance_matrix_matches_cdist_with_finite_gradient_on_the_diagonal():
    emb, _ = _batch()
    d = pairwise_euclidean(emb)
    torch.testing.assert_close(d, torch.cdist(emb, emb), atol=1e-5, rtol=1e-5)
    d.sum().backward()
    assert torch.isfinite(emb.grad).all()


def test_contrastive_loss_matches_the_formula():
    emb, labels = _batch()
    loss, _ = ContrastiveLoss("all_pairs", margin=0.7)(emb, labels)
    d = torch.cdist(emb, emb).detach().numpy()
    same = (labels[:, None] == labels[None, :]).numpy()
    iu = np.triu_indices(len(labels), 1)
    dd, ss = d[iu], same[iu]
    # mean over positive pairs + mean over negative pairs (pytorch-metric-learning's reduction)
    expected = 0.5 * (np.mean(dd[ss] ** 2) + np.mean(np.maximum(0, 0.7 - dd[~ss]) ** 2))
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_batch_hard_picks_the_hardest_positive_and_negative():
    emb, labels = _batch(1)
    d = pairwise_euclidean(emb).detach()
    a, p, n = batch_hard(d, labels, 0.2)
    for ai, pi, ni in zip(a.tolist(), p.tolist(), n.tolist(), strict=True):
        same = labels == labels[ai]
        same[ai] = False
        assert d[ai, pi] == d[ai][same].max()
        assert d[ai, ni] == d[ai][labels != labels[ai]].min()


def test_batch_all_returns_exactly_the_violating_triplets():
    emb, labels = _batch(2, b=12, classes=3)
    d = pairwise_euclidean(emb).detach()
    got = set(zip(*(t.tolist() for t in batch_all(d, labels, 0.3)), strict=True))
    want = {
        (a, p, n)
        for a in range(12)
        for p in range(12)
        for n in range(12)
        if a != p
        and labels[a] == labels[p]
        and labels[a] != labels[n]
        and d[a, p] - d[a, n] + 0.3 > 0
    }
    assert got == want


def test_hard_pairs_keeps_only_negatives_inside_the_margin():
    emb, labels = _batch(3)
    d = pairwise_euclidean(emb).detach()
    _, (ni, nj) = hard_pairs(d, labels, 0.9)
    assert (d[ni, nj] < 0.9).all() and (labels[ni] != labels[nj]).all()


def test_single_identity_batch_gives_zero_triplet_loss_with_a_graph():
    emb = torch.randn(6, 4, requires_grad=True)
    loss, stats = TripletLoss("batch_hard", 0.2)(emb, torch.zeros(6, dtype=torch.long))
    assert loss.item() == 0.0 and stats["mined_triplets"] == 0
    loss.backward()


def test_losses_decrease_when_optimised():
    torch.manual_seed(0)
    x = torch.randn(32, 10)
    labels = torch.arange(32) % 4
    x = x + labels[:, None].float()
    net = torch.nn.Linear(10, 4)
    crit = TripletLoss("batch_all", 0.2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    first = None
    for _ in range(50):
        loss, _ = crit(torch.nn.functional.normalize(net(x), dim=1), labels)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first * 0.5


def test_collapsed_embeddings_stop_training_with_advice():
    # a real collapse: an encoder whose output ignores its input
    from siamese.errors import EmbeddingCollapseError
    from siamese.training.module import check_embedding_spread

    emb = torch.nn.functional.normalize(torch.ones(16, 8), dim=1)
    spread = float((emb - emb.mean(0)).norm(dim=1).mean())
    with pytest.raises(EmbeddingCollapseError, match="epoch 3.*batch_hard"):
        check_embedding_spread(spread, 3)
    healthy = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    check_embedding_spread(float((healthy - healthy.mean(0)).norm(dim=1).mean()), 3)


# The fast path (dense masked reductions, hand-written gradients) against the reference path
# (mined index tuples, autograd), on batches with the awkward cases: duplicate embeddings (zero
# distances, ties), anchors without positives, and identities that fill the whole batch.


def _awkward_batch(seed: int, b: int = 20, dim: int = 6):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, dim, generator=g, dtype=torch.float64) * 0.5
    emb[3] = emb[2]  # a duplicate: zero distance, tied distances to everyone else
    labels = torch.randint(0, 5, (b,), generator=g) * 7 + 10**12  # large ids
    labels[3] = labels[2]
    labels[-1] = -1  # an identity of one image: an anchor without positives
    return emb, labels


FAST_CASES = [
    ("contrastive", "hard_pairs", {}),
    ("contrastive", "hard_pairs", {"contrastive_form": "linear"}),
    ("contrastive", "all_pairs", {}),
    ("contrastive", "all_pairs", {"contrastive_form": "linear"}),
    ("triplet", "batch_hard", {}),
    ("triplet", "batch_hard", {"soft_margin": True}),
    ("triplet", "batch_all", {}),
    ("triplet", "batch_all", {"soft_margin": True}),
    ("triplet", "semi_hard", {}),
    ("triplet", "semi_hard", {"soft_margin": True}),
    ("multi_similarity", "all_pairs", {}),
    ("multi_similarity", "all_pairs", {"ms_alpha": 1.0, "ms_beta": 10.0, "ms_base": 0.2}),
]


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean"])
@pytest.mark.parametrize("loss, miner, kw", FAST_CASES)
@pytest.mark.parametrize("seed", range(3))
def test_fast_path_equals_reference_path(loss, miner, kw, distance, seed):
    emb, labels = _awkward_batch(seed)
    crit = build_loss(TrainParams(loss=loss, miner=miner, margin=0.8, distance=distance, **kw))
    results = []
    for fn in (crit.forward, crit.reference):
        e = emb.clone().requires_grad_(True)
        value, stats = fn(e, labels)
        value.backward()
        results.append((value.detach(), e.grad, stats))
    (v1, g1, s1), (v2, g2, s2) = results
    torch.testing.assert_close(v1, v2, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(g1, g2, atol=1e-10, rtol=1e-9)
    assert s1 == s2


@pytest.mark.parametrize("miner", ["batch_all", "semi_hard"])
def test_fast_path_counts_triplets_exactly_on_the_margin(miner):
    # d(a, p) = 1 and d(a, n) = 1.5: the gap is exactly the margin 0.5 (PML keeps such triplets)
    emb = torch.tensor([[0.0], [1.0], [1.5]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    crit = TripletLoss(miner, 0.5)
    (a, p, n) = crit.miner(pairwise_euclidean(emb), labels, 0.5)
    assert (0, 1, 2) in set(zip(a.tolist(), p.tolist(), n.tolist(), strict=True))
    e = emb.clone().requires_grad_(True)
    loss, stats = crit(e, labels)
    loss.backward()
    ref = crit.reference(emb, labels)
    assert stats == ref[1]
    torch.testing.assert_close(loss.detach(), ref[0])


def test_fast_path_with_float32_batches_and_no_pairs():
    emb = torch.randn(6, 4, requires_grad=True)
    for loss, miner in (("contrastive", "hard_pairs"), ("triplet", "batch_all")):
        value, _ = LOSSES[loss](miner, 0.2)(emb, torch.arange(6))  # no positive pair
        value.backward()
        assert value.item() == 0.0 and torch.isfinite(emb.grad).all()


def test_multi_similarity_falls_back_to_log_sum_exp_when_exp_could_overflow():
    emb, labels = _awkward_batch(0)
    crit = MultiSimilarityLoss(2.0, 400.0, 0.5, pair_margin=0.1)
    value, _ = crit(emb.float(), labels)  # beta * (1 - base) = 200: exp would overflow float32
    torch.testing.assert_close(value, crit.reference(emb.float(), labels)[0])
    assert torch.isfinite(value)


@pytest.mark.parametrize("miner", ["batch_all", "semi_hard"])
def test_fast_triplet_reduction_in_several_chunks_equals_one(miner, monkeypatch):
    from siamese.mining import online

    emb, labels = _awkward_batch(1)
    crit = TripletLoss(miner, 0.8)
    results = []
    for chunk in (1 << 22, 3 * len(labels)):  # one step, then 3 (anchor, positive) rows a step
        monkeypatch.setattr(online, "CHUNK_ELEMENTS", chunk)
        e = emb.clone().requires_grad_(True)
        value, stats = crit(e, labels)
        value.backward()
        results.append((value.detach(), e.grad, stats))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-12, rtol=1e-10)
    assert results[0][2] == results[1][2]


# The registries: the config's choices come from them, and each loss builds from validated params.


def test_config_choices_come_from_the_loss_and_miner_registries():
    from siamese import config
    from siamese.mining import MINERS

    assert config.LOSSES == tuple(LOSSES) and config.MINERS == tuple(MINERS)
    for name, cls in LOSSES.items():
        assert cls.name == name and set(cls.miners) <= set(MINERS)
        assert config.LOSS_MINERS[name] == cls.miners
        for miner in cls.miners:
            crit = build_loss(TrainParams(loss=name, miner=miner))
            assert isinstance(crit, cls) and not list(crit.state_dict())


def test_bce_scores_every_pair_with_the_encoder_head():
    from siamese.losses.bce import balanced_bce
    from siamese.models.encoders import SiameseEncoder

    crit = build_loss(TrainParams(loss="bce", miner="all_pairs"))
    enc = SiameseEncoder("mlp", 8, 16, 4, True, head=crit.head).double()
    emb, labels = _awkward_batch(0, dim=16)
    loss, stats = crit(emb, labels, enc)
    i, j = torch.triu_indices(len(emb), len(emb), 1)
    same = labels[i] == labels[j]
    torch.testing.assert_close(loss, balanced_bce(enc.pair_logits(emb[i], emb[j]), same))
    assert stats == {"pairs_pos": int(same.sum()), "pairs_neg": int((~same).sum())}
    with pytest.raises(ValueError, match="head"):
        crit(emb, labels)


def test_offline_pairs_train_through_the_pair_loss_only():
    crit = build_loss(TrainParams(loss="contrastive", miner="offline_pairs"))
    emb, labels = _awkward_batch(0)
    with pytest.raises(ValueError, match="explicit pairs"):
        crit(emb, labels)
    with pytest.raises(ValueError, match="allowed for triplet: batch_all, batch_hard, semi_hard"):
        TripletLoss("hard_pairs", 0.2)


def _naive_prototypical(emb, labels, temperature):
    """Snell et al. written out: one query at a time against prototypes built without it."""
    classes = sorted(set(labels.tolist()))
    losses = []
    for i in range(len(emb)):
        own = labels == labels[i]
        if own.sum() < 2:
            continue
        protos = []
        for c in classes:
            members = (labels == c) & (torch.arange(len(emb)) != i)
            protos.append(emb[members].mean(0))
        d = torch.stack([((emb[i] - p) ** 2).sum() for p in protos])
        target = torch.tensor(classes.index(int(labels[i])))
        losses.append(torch.nn.functional.cross_entropy((-d / temperature)[None], target[None]))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_prototypical_loss_equals_the_episode_written_out(seed, temperature):
    from siamese.losses import PrototypicalLoss

    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(24, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (24,), generator=g)
    labels[0] = 9  # a class with one image: a prototype, never a query
    crit = PrototypicalLoss(temperature)
    e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    ours, stats = crit(e1, labels)
    theirs = _naive_prototypical(e2, labels, temperature)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(e1.grad, e2.grad)
    counts = torch.bincount(labels)
    assert stats["ways"] == len(set(labels.tolist()))
    assert stats["queries"] == int(counts[counts > 1].sum()) < 24
    # one class, or no class with two images: no episode, a zero loss with a gradient
    for degenerate in (torch.zeros(24, dtype=torch.long), torch.arange(24)):
        value, _ = crit(emb.clone().requires_grad_(True), degenerate)
        assert value.item() == 0.0
