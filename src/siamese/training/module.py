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
from siamese.models.compile import check_compiler, compile_network
from siamese.models.encoders import SiameseEncoder, backbone_parameters
from siamese.models.loading import embedding_distances
from siamese.models.precision import full_precision, to_numpy
from siamese.models.pretrained import load_pretrained
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


def nhwc(x: torch.Tensor) -> torch.Tensor:
    """On a GPU, an image batch in the layout of the encoder's weights (channels-last; no copy
    when it already is); on the CPU as it is (see SiameseModule.on_fit_start)."""
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 and x.is_cuda else x


def build_training_encoder(params: Params, head: str | None = None) -> SiameseEncoder:
    """The encoder training starts from: the network model.* describes, with model.pretrained's
    weights loaded into it."""
    m = params.model
    encoder = SiameseEncoder(
        m.encoder,
        params.data.image_size,
        m.embedding_dim,
        m.channels,
        m.normalize,
        params.train.distance,
        head=head,
        in_channels=params.data.channels,
        resize=params.data.resize,
        encoder_args=m.encoder_args,
    )
    if m.pretrained:
        load_pretrained(encoder.net, m.pretrained, m.pretrained_strict)
    return encoder


def trained_apart(encoder: SiameseEncoder, params: Params) -> list[torch.nn.Parameter] | None:
    """The encoder's backbone parameters when they train apart from its projection
    (train.freeze_backbone_epochs, train.backbone_lr_scale < 1), else None."""
    t = params.train
    if not t.freeze_backbone_epochs and t.backbone_lr_scale == 1.0:
        return None
    return list(backbone_parameters(encoder.net, params.model.encoder))


def check_model(params: Params) -> None:
    """Build the encoder training would start from (a python: factory called and its output
    checked, model.pretrained read and fitted) and find its backbone if it trains apart: every
    model.* error before anything is recorded."""
    if params.model.compile:
        check_compiler(params.trainer.accelerator)
    # on its own random stream: the encoder training builds next starts from the same weights
    # whether or not this check ran (a DDP child does not run it)
    with torch.random.fork_rng(devices=[]):
        trained_apart(build_training_encoder(params), params)


class SiameseModule(pl.LightningModule):
    def __init__(self, params: Params, val_pairs: dict | None = None, val_images=None):
        super().__init__()
        self.p = params
        m = self.p.model
        t = self.p.train
        # the loss and its miner, and the similarity head the loss trains (if any)
        self.criterion = build_loss(t)
        self.online_mining = MINERS[t.miner].online
        self.encoder = build_training_encoder(params, head=self.criterion.head)
        if m.compile:
            compile_network(self.encoder.net, self.p.trainer.accelerator)
        # the backbone apart from the projection, when they train differently (else None)
        self.backbone = trained_apart(self.encoder, params)
        self.val_pairs = val_pairs
        self.val_images = None if val_images is None else np.asarray(val_images)
        self._val_emb: list[torch.Tensor] = []

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the params a checkpoint was trained with, as plain JSON types (loads weights_only)
        checkpoint["siamese_params"] = self.p.model_dump(mode="json")

    def on_fit_start(self) -> None:
        # NHWC convolutions on a GPU (tensor cores). Not on the CPU: no faster there (conv4 at
        # 28 px, within noise), and its other convolution kernels changed the training's
        # trajectory enough to cost the digits bce_head run 0.06 test AUC
        if self.device.type == "cuda":
            self.encoder.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if not self.online_mining:  # batches of explicit (offline) pairs
            a, b, y = batch
            emb = self.encoder(nhwc(torch.cat([a, b])))
            loss = self.criterion.pair_loss(self.encoder, emb[: len(a)], emb[len(a) :], y)
            stats = {}
            n = len(a) * 2
        else:
            x, labels = batch
            # mine over the global batch: every rank sees all ranks' embeddings
            emb, labels = gather_batch(self.encoder(nhwc(x)), labels)
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
        self._val_emb.append(full_precision(self.encoder(nhwc(x)).detach().cpu()))

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
        params = list(self.parameters())
        if self.backbone is not None:
            # the backbone at lr x backbone_lr_scale, everything else (the projection, a
            # similarity head) at lr; the cosine schedule scales both
            backbone = {id(p) for p in self.backbone}
            params = [
                {"params": self.backbone, "lr": t.lr * t.backbone_lr_scale},
                {"params": [p for p in params if id(p) not in backbone], "lr": t.lr},
            ]
        opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.max_epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
