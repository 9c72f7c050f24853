"""The learned similarity head (Koch et al. 2015) and its balanced BCE loss."""

from __future__ import annotations

import pytest
import torch

from siamese.config import validate_params
from siamese.errors import ParamsError
from siamese.losses.bce import balanced_bce
from siamese.models.encoders import SiameseEncoder
from siamese.models.heads import WeightedL1Head, head_distance


def _pairs(seed=0, n=40, dim=16):
    g = torch.Generator().manual_seed(seed)
    a = torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1)
    b = torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1)
    same = torch.arange(n) % 3 == 0
    return a, b, same


def test_head_is_koch_weighted_l1_and_its_distance_is_one_minus_p():
    a, b, _ = _pairs()
    head = WeightedL1Head(16).double()
    with torch.no_grad():
        head.weight.copy_(torch.linspace(-1, 1, 16))
        head.bias.fill_(0.3)
    logits = head(a, b)
    expected = (a - b).abs() @ torch.linspace(-1, 1, 16, dtype=torch.float64) + 0.3
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(head_distance(logits), 1 - torch.sigmoid(expected))


def test_head_distance_keeps_precision_for_confident_matches():
    # 1 - sigmoid(40) underflows to 0 in float64; sigmoid(-40) does not
    d = head_distance(torch.tensor([40.0, 41.0], dtype=torch.float64))
    assert d[0] > d[1] > 0


def test_initial_head_separates_identical_from_random_pairs():
    a, b, _ = _pairs(dim=64)
    head = WeightedL1Head(64).double()
    with torch.no_grad():
        p_same = torch.sigmoid(head(a, a))
        p_random = torch.sigmoid(head(a, b))
    assert (p_same > 0.98).all()
    assert 0.2 < p_random.mean() < 0.8


def test_balanced_bce_weights_positives_and_negatives_equally():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(30, generator=g, dtype=torch.float64, requires_grad=True)
    same = torch.arange(30) % 5 == 0
    loss = balanced_bce(logits, same)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    pos = bce(logits[same], torch.ones(int(same.sum()), dtype=torch.float64))
    neg = bce(logits[~same], torch.zeros(int((~same).sum()), dtype=torch.float64))
    torch.testing.assert_close(loss, (pos + neg) / 2)
    assert torch.autograd.gradcheck(lambda x: balanced_bce(x, same), (logits,))


@pytest.mark.parametrize("which", ["positives", "negatives"])
def test_balanced_bce_with_one_class_only_is_that_class_mean(which):
    logits = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    same = torch.full((3,), which == "positives")
    loss = balanced_bce(logits, same)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, same.float())
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_encoder_distance_matrix_equals_row_wise_distance():
    enc = SiameseEncoder("mlp", 8, 16, 4, True, head="weighted_l1").double()
    x, y, _ = _pairs(n=70)
    with torch.no_grad():
        full = enc.distance_matrix(x, y, chunk=16)
        rows = enc.pair_distance(x.repeat_interleave(len(y), 0), y.repeat(len(x), 1))
    torch.testing.assert_close(full.reshape(-1), rows)
    assert enc.config["distance"] == "learned" and enc.config["head"] == "weighted_l1"


def test_encoder_without_head_uses_its_fixed_distance():
    enc = SiameseEncoder("mlp", 8, 16, 4, True, distance="cosine")
    x, y, _ = _pairs(n=5)
    x, y = x.float(), y.float()
    torch.testing.assert_close(
        enc.pair_distance(x, y), 1 - torch.nn.functional.cosine_similarity(x, y)
    )
    with pytest.raises(ValueError, match="no similarity head"):
        enc.pair_logits(x, y)


def test_bce_accepts_pair_miners_only():
    validate_params({"train": {"loss": "bce", "miner": "all_pairs"}})
    validate_params({"train": {"loss": "bce", "miner": "offline_pairs"}})
    with pytest.raises(ParamsError, match="allowed for bce: all_pairs, offline_pairs"):
        validate_params({"train": {"loss": "bce", "miner": "batch_hard"}})
