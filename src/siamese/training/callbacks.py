"""Lightning callbacks of the training."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm
from torch import nn
from tqdm.contrib.logging import logging_redirect_tqdm

from siamese.models.encoders import backbone_modules
from siamese.output import format_seconds
from siamese.training.module import check_embedding_spread

log = logging.getLogger(__name__)


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
        # the whole training state (optimizer, loops, callbacks): what a resume needs
        trainer.save_checkpoint(tmp, weights_only=False)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)


class EpochLog(Callback):
    """One line per epoch, so a long training is never a black box (in a log, under ``dvc
    repro`` and in the Prefect UI, where no progress bar is drawn), on one line::

        epoch 3/8  step 60  train loss 0.2114  val AUC 0.9412  1530 img/s  elapsed 0:00:41
        ETA 0:01:08

    The ETA assumes the remaining epochs take as long as this run's epochs took on average, and
    is capped by the wall-clock budget ``train.max_minutes``; early stopping may end sooner."""

    def __init__(self, max_epochs: int, max_minutes: float | None = None):
        self.max_epochs = max_epochs
        self.max_seconds = None if max_minutes is None else 60.0 * max_minutes
        self.started = self.epoch_started = self.last_batch = 0.0
        self.first_epoch = 0
        self.images = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.monotonic()
        self.first_epoch = trainer.current_epoch  # > 0 when resumed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_started = time.monotonic()
        self.images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # images in the batch: every image tensor's first dimension ((x, labels): x; offline
        # pairs (a, b, y): a and b), times the processes that each trained on such a batch
        self.images += trainer.world_size * sum(
            len(t) for t in batch if isinstance(t, torch.Tensor) and t.dim() >= 3
        )
        self.last_batch = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        now = time.monotonic()
        epoch = trainer.current_epoch + 1
        metrics = trainer.callback_metrics
        parts = [f"epoch {epoch}/{self.max_epochs}", f"step {trainer.global_step}"]
        for key, name in (("train/loss", "train loss"), ("val/roc_auc", "val AUC")):
            if key in metrics:
                parts.append(f"{name} {float(metrics[key]):.4f}")
        seconds = self.last_batch - self.epoch_started  # training only, not validation
        if seconds > 0 and self.images:
            parts.append(f"{self.images / seconds:.0f} img/s")
        elapsed = now - self.started
        parts.append(f"elapsed {format_seconds(elapsed)}")
        done = epoch - self.first_epoch
        remaining = elapsed / done * (self.max_epochs - epoch) if done > 0 else 0.0
        if self.max_seconds is not None:
            remaining = max(0.0, min(remaining, self.max_seconds - elapsed))
        parts.append(f"ETA {format_seconds(remaining)}")
        log.info("%s", "  ".join(parts))  # above the bar, if one is drawn (TrainingBar)


class TrainingBar(TQDMProgressBar):
    """Lightning's tqdm bar (on a terminal only, siamese.output.progress_wanted) for the
    training batches alone: one line redrawn in place, which ``siamese run`` can pass on to its
    terminal as it is. (The validation bar is drawn on the line below with cursor movements, and
    Rich's bar, Lightning's default when rich is installed, erases the lines logged under it.)
    While it is drawn, log records are written above it, not into it (tqdm's logging
    redirect)."""

    def __init__(self) -> None:
        super().__init__()
        self._redirect: contextlib.AbstractContextManager | None = None

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # the loggers that write to the console themselves (Lightning's own when it was
        # imported before logging was configured); the others reach them by propagation
        names = ("pytorch_lightning", "lightning_fabric")
        candidates = [logging.root, *map(logging.getLogger, names)]
        consoles = [
            lg
            for lg in candidates
            if any(
                isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)
                for h in lg.handlers
            )
        ]
        self._redirect = logging_redirect_tqdm(loggers=consoles, tqdm_class=Tqdm)
        self._redirect.__enter__()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._restore_logging()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        self._restore_logging()

    def _restore_logging(self) -> None:
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None


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
