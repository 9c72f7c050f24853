"""The LightningModule: one shared encoder, a metric loss with in-batch mining, and validation on
the fixed validation pairs (the signal for early stopping and checkpointing)."""

from __future__ import annotations

import math

import numpy as np
import pytorch_lightning as pl
import torch

from siamese.calibration.thresholds import max_accuracy_threshold
from siamese.config import Params
from siamese.errors import EmbeddingCollapseError, NonFiniteLossError
from siamese.evaluation import metrics
from siamese.losses import build_loss
from siamese.mining import MINERS
from siamese.models.encoders import SiameseEncoder
from siamese.models.loading import embedding_distances
from siamese.models.precision import full_precision, to_numpy
from siamese.training.distributed import gather_batch

COLLAPSE_SPREAD = 1e-3  # mean in-batch distance below this = a collapsed embedding


def check_embedding_spread(spread: float, epoch: int) -> None:
    """Fail loudly on a collapsed embedding instead of training on for nothing."""
    if spread < COLLAPSE_SPREAD:
        raise EmbeddingCollapseError(
            f"embeddings collapsed at epoch {epoch} (mean distance to the batch centre "
            f"{spread:.2e}): every input maps to one point. Known cause: batch_hard triplet "
            "with a fixed margin; use batch_all or semi_hard, a soft margin "
            "(train.soft_margin: true), the contrastive loss, or a lower train.lr"
        )


class SiameseModule(pl.LightningModule):
    def __init__(self, params: Params, val_pairs: dict | None = None, val_images=None):
        super().__init__()
        self.p = params
        m = self.p.model
        t = self.p.train
        # the loss and its miner, and the similarity head the loss trains (if any)
        self.criterion = build_loss(t)
        self.online_mining = MINERS[t.miner].online
        self.encoder = SiameseEncoder(
            m.encoder,
            self.p.data.image_size,
            m.embedding_dim,
            m.channels,
            m.normalize,
            t.distance,
            head=self.criterion.head,
            in_channels=self.p.data.channels,
            resize=self.p.data.resize,
        )
        self.val_pairs = val_pairs
        self.val_images = None if val_images is None else np.asarray(val_images)
        self._val_emb: list[torch.Tensor] = []

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the params a checkpoint was trained with, as plain JSON types (loads weights_only)
        checkpoint["siamese_params"] = self.p.model_dump(mode="json")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if not self.online_mining:  # batches of explicit (offline) pairs
            a, b, y = batch
            emb = self.encoder(torch.cat([a, b]))
            loss = self.criterion.pair_loss(self.encoder, emb[: len(a)], emb[len(a) :], y)
            stats = {}
            n = len(a) * 2
        else:
            x, labels = batch
            # mine over the global batch: every rank sees all ranks' embeddings
            emb, labels = gather_batch(self.encoder(x), labels)
            loss, stats = self.criterion(emb, labels, self.encoder)
            n = len(emb)
            with torch.no_grad():  # mean distance of an embedding to the batch centre
                spread = (emb - emb.mean(0)).norm(dim=1).mean()
            self.log("train/embedding_spread", spread, on_step=False, on_epoch=True, batch_size=n)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at epoch {self.current_epoch}, "
                f"step {self.global_step}; lower train.lr or check the inputs"
            )
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        for k, v in stats.items():
            self.log(f"train/{k}", float(v), on_step=False, on_epoch=True, batch_size=n)
        return loss

    def on_train_epoch_end(self) -> None:
        spread = self.trainer.callback_metrics.get("train/embedding_spread")
        if spread is not None:
            check_embedding_spread(float(spread), self.current_epoch)

    def on_validation_epoch_start(self) -> None:
        self._val_emb = []

    def validation_step(self, batch, batch_idx: int) -> None:
        x, _ = batch
        # float32 at least: the metrics below read them as numpy, which has no bfloat16
        self._val_emb.append(full_precision(self.encoder(x).detach().cpu()))

    def on_validation_epoch_end(self) -> None:
        if self.val_pairs is None or not self._val_emb:
            return
        emb = torch.cat(self._val_emb)
        if len(emb) != len(self.val_images):  # sanity-check run on a partial loader
            return
        pos = {int(g): i for i, g in enumerate(self.val_images)}
        a = emb[[pos[int(i)] for i in self.val_pairs["a"]]]
        b = emb[[pos[int(i)] for i in self.val_pairs["b"]]]
        y = self.val_pairs["y"]
        with torch.no_grad():
            # the distances calibration and evaluation compute: float64, the model's metric
            d = embedding_distances(self.encoder, to_numpy(a), to_numpy(b))
            loss = self.criterion.pair_loss(self.encoder, a, b, torch.from_numpy(y))
        if not np.all(np.isfinite(d)):
            auc, acc, eer = 0.5, 0.5, 0.5
        else:
            auc = metrics.roc_auc(d, y)
            eer = metrics.eer(d, y)
            acc = max_accuracy_threshold(d, y)[1]
        self.log("val/roc_auc", auc, prog_bar=True)
        self.log("val/eer", eer)
        self.log("val/accuracy", acc)
        self.log("val/pair_loss", float(loss) if math.isfinite(float(loss)) else 1e9)

    def configure_optimizers(self):
        t = self.p.train
        opt = torch.optim.AdamW(self.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.max_epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
