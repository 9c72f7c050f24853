"""The losses must train, not just compute: each beats an untrained encoder of the same
architecture on identity-disjoint test pairs by a wide margin."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from siamese import paths
from siamese.config import load_params
from siamese.data.artifacts import PreparedData, load_pairs
from siamese.evaluation import metrics
from siamese.models.encoders import SiameseEncoder
from siamese.models.loading import load_encoder, pair_distances
from siamese.params_file import set_params
from siamese.stages.mine import run_mine
from siamese.stages.prepare import run_prepare
from siamese.stages.train import run_train

QUICK = [  # the shipped digits settings, shortened
    "data.image_size=28",
    "mine.test_pairs=2000",
    "model.channels=32",
    "model.embedding_dim=64",
    "train.identities_per_batch=6",
    "train.images_per_identity=16",
    "train.batches_per_epoch=15",
    "train.max_epochs=4",
    "train.early_stopping_patience=4",
]

LOSSES = {
    "contrastive": ["train.loss=contrastive", "train.miner=hard_pairs"],
    "triplet_semi_hard": ["train.loss=triplet", "train.miner=semi_hard", "train.margin=0.2"],
    "bce_head": ["train.loss=bce", "train.miner=all_pairs", "train.lr=0.003", "train.max_epochs=6"],
}


def trained_vs_untrained_auc(overrides: list[str]) -> tuple[float, float]:
    """Test-pair ROC AUC of the trained encoder and of the same architecture untrained."""
    set_params("params.yaml", overrides)
    params = load_params()
    run_prepare(params, paths.PREPARED)
    run_mine(params, paths.PREPARED, paths.PAIRS)
    run_train(params, paths.PREPARED, paths.PAIRS, paths.TRAIN, paths.TRAIN_METRICS)
    data = PreparedData(paths.PREPARED)
    pairs = load_pairs(paths.PAIRS / "test.npz")
    trained = load_encoder(paths.TRAIN)
    torch.manual_seed(params.seed)
    untrained = SiameseEncoder(**{k: v for k, v in trained.config.items() if k != "distance"})
    untrained.config["distance"] = trained.config["distance"]
    untrained.eval()
    y = pairs["y"].astype(bool)
    aucs = [metrics.roc_auc(pair_distances(m, data.images, pairs), y) for m in (trained, untrained)]
    return aucs[0], aucs[1]


# the softmax family (Khosla et al. 2020; Chen et al. 2020) on cosine similarity: in the slow set
SLOW_LOSSES = {
    "supcon": ["train.loss=supcon", "train.miner=all_pairs", "train.temperature=0.3"],
    "ntxent": ["train.loss=ntxent", "train.miner=all_pairs"],
}
LOSSES.update({k: [*v, "train.distance=cosine"] for k, v in SLOW_LOSSES.items()})


@pytest.mark.parametrize(
    "loss",
    [pytest.param(k, marks=pytest.mark.slow) if k in SLOW_LOSSES else k for k in sorted(LOSSES)],
)
def test_loss_trains_far_beyond_an_untrained_encoder_on_digits(project, loss):
    # an untrained CNN already ranks two unseen digits well (AUC ~0.91), so "a wide margin" is
    # measured on the error: training must remove at least 40% of the untrained 1 - AUC
    trained, untrained = trained_vs_untrained_auc(QUICK + LOSSES[loss])
    assert np.isfinite(trained) and trained > 0.94, (trained, untrained)
    assert 1 - trained <= 0.6 * (1 - untrained), (trained, untrained)


@pytest.mark.parametrize("loss", ["contrastive", "bce"])
def test_offline_mined_pairs_train_the_encoder(project, loss):
    # train.miner=offline_pairs: batches of the mine stage's (a, b, same) pairs, no P x K sampler
    overrides = [f"train.loss={loss}", "train.miner=offline_pairs", "mine.train_pairs=2000"]
    trained, untrained = trained_vs_untrained_auc(QUICK + overrides + ["train.max_epochs=2"])
    assert np.isfinite(trained) and trained > untrained, (trained, untrained)


OMNIGLOT_QUICK = [
    "data.image_size=28",
    "data.layout=grouped",
    "data.split_by=group",
    "mine.val_pairs=500",
    "mine.test_pairs=2000",
    "mine.train_pairs=0",
    "model.channels=32",
    "model.embedding_dim=64",
    "train.identities_per_batch=16",
    "train.images_per_identity=4",
    "train.batches_per_epoch=40",
    "train.max_epochs=3",
    "train.early_stopping_patience=3",
    "augment=none",
    "evaluate.bootstrap_resamples=0",
]


@pytest.mark.slow  # about a minute per loss on 2 cores
@pytest.mark.parametrize("loss", ["contrastive", "triplet_semi_hard"])
def test_loss_trains_far_beyond_an_untrained_encoder_on_omniglot(project, omniglot_zip, loss):
    # held-out alphabets: an untrained Conv-4 scores AUC ~0.75, two minutes of training ~0.94
    overrides = [f"data.source={omniglot_zip}", *OMNIGLOT_QUICK, *LOSSES[loss]]
    trained, untrained = trained_vs_untrained_auc(overrides)
    assert trained - untrained > 0.12, (trained, untrained)
