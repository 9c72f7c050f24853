"""Fitting the encoder: the Lightning Trainer built from ``params.trainer`` and ``params.train``,
the fit itself, and the export of the best weights as a plain encoder state dict.

The caller brings the Lightning logger (the stage builds an MLflow one), so training does not
depend on a tracking backend.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers.logger import Logger  # the base class: any backend
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from siamese.config import MONITORS, Params
from siamese.errors import ParamsError, TrainingFault
from siamese.models.loading import save_encoder
from siamese.output import progress_wanted
from siamese.training.callbacks import EpochLog, FreezeBackbone, SaveLastCheckpoint, TrainingBar
from siamese.training.datamodule import SiameseDataModule
from siamese.training.module import SiameseModule
from siamese.training.resume import checkpoint_dir, checkpoint_progress, last_checkpoint
from siamese.training.settings import trainer_settings

log = logging.getLogger(__name__)


def build_trainer(
    params: Params, scratch: Path, logger: Logger
) -> tuple[pl.Trainer, ModelCheckpoint, SaveLastCheckpoint]:
    """The Trainer, with the callback that keeps the best epoch and the one that saves every
    epoch for resuming (both writing under ``scratch``)."""
    t = params.train
    # which weights are exported: the best validation epoch by AUC or pair loss, or the last
    # (AUC saturates at 1.0 on a handful of validation identities, and ties never improve)
    monitor, mode = MONITORS[t.monitor]
    best = ModelCheckpoint(
        dirpath=checkpoint_dir(scratch), filename="best", monitor=monitor, mode=mode
    )
    last = SaveLastCheckpoint(last_checkpoint(scratch))
    callbacks = [best, last, EpochLog(t.max_epochs, t.max_minutes)]
    if progress_wanted():
        callbacks.append(TrainingBar())
    if t.freeze_backbone_epochs:
        callbacks.append(FreezeBackbone(t.freeze_backbone_epochs))
    if t.monitor != "last":
        callbacks.append(
            EarlyStopping(monitor=monitor, mode=mode, patience=t.early_stopping_patience)
        )
    try:
        trainer = _trainer(params, scratch, logger, callbacks)
    except MisconfigurationException as err:
        # Lightning checks the trainer settings against this machine only here (an accelerator
        # that is not installed, more devices than it has): a params error, not a crash
        raise ParamsError(
            f"trainer settings cannot run on this machine: {err} (trainer.accelerator, "
            "trainer.devices, trainer.strategy, trainer.precision in params.yaml)"
        ) from err
    if t.freeze_backbone_epochs and trainer.world_size > 1:
        raise ParamsError(
            f"train.freeze_backbone_epochs needs a single training process (this trainer runs "
            f"{trainer.world_size}: DDP cannot change which parameters it synchronises "
            "mid-run); set it to 0 and use train.backbone_lr_scale, or train on one device"
        )
    return trainer, best, last


def _trainer(params: Params, scratch: Path, logger: Logger, callbacks: list) -> pl.Trainer:
    t = params.train
    return pl.Trainer(
        **trainer_settings(params),
        max_epochs=t.max_epochs,
        max_time=None if t.max_minutes is None else {"minutes": t.max_minutes},
        logger=logger,
        callbacks=callbacks,
        # the data module's samplers already give each rank its share of every epoch
        use_distributed_sampler=False,
        log_every_n_steps=params.trainer.log_every_n_steps,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        # Lightning's bar on a terminal only (siamese.output); EpochLog writes a line per epoch
        enable_progress_bar=progress_wanted(),
        default_root_dir=str(scratch),
    )


def fit_encoder(
    params: Params,
    dm: SiameseDataModule,
    scratch: Path,
    logger: Logger,
    *,
    resume_from: str | None,
    launcher: bool,
) -> dict:
    """Fit, resuming from the checkpoint ``resume_from`` if given, and export the best weights
    (``model.pt``, ``model.json``) into ``scratch``; the summary of the fit.

    Only the launching process (``launcher``) reports: it gets the summary, and on a failure
    says where the last good checkpoint is kept (the stage ends its tracking run FAILED). A DDP
    child it launched returns ``{}`` and lets its errors propagate."""
    module = SiameseModule(params, dm.val_pairs, dm.val_images)
    trainer, best_ckpt, last_ckpt = build_trainer(params, scratch, logger)
    started = time.perf_counter()
    try:
        # our own checkpoint of plain tensors and JSON types (SiameseModule.on_save_checkpoint)
        trainer.fit(module, datamodule=dm, ckpt_path=resume_from, weights_only=True)
    except BaseException as err:
        if not launcher or not last_ckpt.path.is_file():
            raise
        epoch, _ = checkpoint_progress(last_ckpt.path)
        kept = (
            f"the last good checkpoint (after epoch {epoch}) is kept at {last_ckpt.path}; a "
            "rerun with the same params and data resumes from it"
        )
        if isinstance(err, TrainingFault):
            raise type(err)(f"{err}; {kept}") from err
        log.error("training stopped: %s", kept)
        raise
    if not trainer.is_global_zero or not launcher:
        return {}

    best_path = best_ckpt.best_model_path or str(last_ckpt.path)
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    module.load_state_dict(best["state_dict"])
    # read progress from the checkpoint: under ddp_spawn this process's trainer never stepped
    last_epoch, global_steps = checkpoint_progress(last_ckpt.path)
    name = params.train.monitor
    monitor = MONITORS[name][0]
    score_key = f"best_val_{name}" if monitor else "last_val_roc_auc"
    score = best_ckpt.best_model_score if monitor else trainer.callback_metrics.get("val/roc_auc")
    summary = {
        score_key: float(score) if score is not None else float("nan"),
        "epochs_trained": last_epoch + 1,
        "global_steps": global_steps,
        "world_size": int(trainer.world_size),
        "fit_seconds": round(time.perf_counter() - started, 1),
    }
    # the encoder is exported now; the stage publishes it once the tracking server has the run
    save_encoder(module.encoder, scratch)
    return summary
