"""Lightning callbacks of the training."""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from torch import nn

from siamese.models.encoders import backbone_modules
from siamese.training.module import check_embedding_spread


class SaveLastCheckpoint(Callback):
    """Write ``last.ckpt`` after every epoch, atomically. (Lightning 2.6's ``save_last`` only
    refreshes it when the monitored metric improves, which is useless for resuming.)"""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # this hook runs before the module's own collapse check: never save a collapsed epoch
        # as the checkpoint a rerun would resume from
        spread = trainer.callback_metrics.get("train/embedding_spread")
        if spread is not None:
            check_embedding_spread(float(spread), trainer.current_epoch)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)


class FreezeBackbone(Callback):
    """train.freeze_backbone_epochs: for the first ``epochs`` epochs only the encoder's
    projection (and a similarity head) trains. The backbone's parameters get no gradients
    (``requires_grad`` False: AdamW neither steps nor decays them) and its batch norms keep
    their running statistics (eval mode); from epoch ``epochs`` on all of it trains. Set at
    every epoch start from the epoch number, so a resumed training freezes exactly as an
    uninterrupted one. (A single process only: DDP cannot change mid-run which parameters it
    synchronises; siamese.training.fit refuses the combination.)"""

    def __init__(self, epochs: int):
        self.epochs = int(epochs)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        frozen = trainer.current_epoch < self.epochs
        for p in pl_module.backbone:
            p.requires_grad_(not frozen)
        for m in backbone_modules(pl_module.encoder.net):
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train(not frozen)
