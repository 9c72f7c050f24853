"""Lightning callbacks of the training."""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

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
