"""train: fit the shared encoder with Lightning and record the run in MLflow.

Under ``strategy: ddp`` Lightning relaunches this command once per extra device; the launching
process (rank 0) creates the MLflow run and hands its id to the children through the environment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytorch_lightning as pl
import torch
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger

from siamese.config import MONITORS, Params, flatten
from siamese.errors import TrainingFault
from siamese.io import atomic_dir, dir_md5, read_json, write_json
from siamese.registry import tracking
from siamese.registry.tracking import (
    active_tracking_uri,
    dvc_lock_hashes,
    ensure_experiment,
    git_info,
    is_tracking_unreachable,
    tracking_uri,
)
from siamese.training.datamodule import SiameseDataModule
from siamese.training.module import SiameseModule, check_embedding_spread

if TYPE_CHECKING:
    from siamese.training.datamodule import SiameseDataModule

log = logging.getLogger(__name__)
RUN_ID_ENV = "SIAMESE_MLFLOW_RUN_ID"
RESUME_ENV = "SIAMESE_RESUME_CKPT"
RESUME_STATE = "resume.json"  # in the scratch dir: the MLflow run and the inputs' fingerprint


def _is_launcher() -> bool:
    return "LOCAL_RANK" not in os.environ and os.environ.get("NODE_RANK", "0") == "0"


def start_run(params: Params, prepared_md5: str, pairs_md5: str, run_name: str | None) -> str:

    client = tracking.client()
    exp_id = ensure_experiment(params.register.experiment)
    tags = {**git_info(), "stage": "train", "mlflow.runName": run_name or "siamese-train"}
    tags["data.prepared_md5"] = prepared_md5
    tags["data.pairs_md5"] = pairs_md5
    tags.update(dvc_lock_hashes())
    run = client.create_run(exp_id, tags=tags)
    flat = flatten(params.model_dump(mode="json"))
    entries = [Param(k, str(v)[:6000]) for k, v in flat.items()]
    for i in range(0, len(entries), 100):
        client.log_batch(run.info.run_id, params=entries[i : i + 100])
    return run.info.run_id


class SaveLastCheckpoint(Callback):
    """Write ``last.ckpt`` after every epoch, atomically. (Lightning 2.6's ``save_last`` only
    refreshes it when the monitored metric improves, which is useless for resuming.)"""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer, pl_module) -> None:

        # this hook runs before the module's own collapse check: never save a collapsed epoch
        # as the checkpoint a rerun would resume from
        spread = trainer.callback_metrics.get("train/embedding_spread")
        if spread is not None:
            check_embedding_spread(float(spread), trainer.current_epoch)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)


def export_encoder(module, out_dir: Path) -> None:
    """Save the encoder alone as a plain state dict: loadable with weights_only=True."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.encoder.state_dict().items()}
    torch.save(state, out_dir / "model.pt")
    write_json(out_dir / "model.json", {**module.encoder.config, "preprocess": "uint8/127.5-1"})


def checkpoint_progress(path: str | Path) -> tuple[int, int]:
    """(epoch, global step) a Lightning checkpoint was saved at."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return int(ckpt["epoch"]), int(ckpt["global_step"])


def scratch_dir(out_dir: str | Path) -> Path:
    """Where a training in progress keeps its checkpoints (``artifacts/.train.partial``): beside
    the output, so the finished directory is renamed into place, and derived from it, so every
    DDP rank and every rerun finds the same one."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.partial"


def _resume_fingerprint(params: Params, prepared_md5: str, pairs_md5: str) -> str:
    """What a checkpoint may be resumed under: the same training params and the same data."""
    dump = params.model_dump(mode="json")
    dump["train"].pop("resume", None)
    relevant = {k: dump[k] for k in ("seed", "data", "model", "augment", "train", "trainer")}
    text = json.dumps(relevant, sort_keys=True) + prepared_md5 + pairs_md5
    return hashlib.sha256(text.encode()).hexdigest()


def _resumable(scratch: Path, fingerprint: str) -> tuple[str, Path] | None:
    """(MLflow run id, last.ckpt) of an interrupted training of the same inputs, if any."""
    state, ckpt = scratch / RESUME_STATE, scratch / "checkpoints" / "last.ckpt"
    if not (state.is_file() and ckpt.is_file()):
        return None
    try:
        saved = read_json(state)
    except (OSError, ValueError):
        return None
    if saved.get("fingerprint") != fingerprint:
        log.info("discarding the interrupted training in %s: params or data changed", scratch)
        return None

    try:
        run = tracking.client().get_run(saved["run_id"])
    except MlflowException as err:
        if is_tracking_unreachable(err):
            raise
        log.info("discarding the interrupted training: its MLflow run is gone (%s)", err)
        return None
    if run.info.lifecycle_stage != "active":
        return None
    return saved["run_id"], ckpt


def _begin(params: Params, prepared_dir: Path, pairs_dir: Path, scratch: Path, run_name) -> dict:
    """Start a fresh training (new MLflow run, empty scratch) or resume an interrupted one."""

    prepared_md5, pairs_md5 = dir_md5(prepared_dir), dir_md5(pairs_dir)
    fingerprint = _resume_fingerprint(params, prepared_md5, pairs_md5)
    found = _resumable(scratch, fingerprint) if params.train.resume else None
    if found is not None:
        run_id, ckpt = found
        epoch, _ = checkpoint_progress(ckpt)
        client = tracking.client()
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "resumed_after_epoch", str(epoch))
        log.warning(
            "resuming the interrupted training (MLflow run %s) from %s, after epoch %d",
            run_id,
            ckpt,
            epoch,
        )
        return {"run_id": run_id, "ckpt": str(ckpt), "resumed_after_epoch": epoch}
    if scratch.exists():
        shutil.rmtree(scratch)
    run_id = start_run(params, prepared_md5, pairs_md5, run_name)
    write_json(scratch / RESUME_STATE, {"run_id": run_id, "fingerprint": fingerprint})
    return {"run_id": run_id, "ckpt": "", "resumed_after_epoch": None}


def validate_training_data(
    params: Params, prepared_dir: Path, pairs_dir: Path
) -> SiameseDataModule:
    """The data module, loaded and checked (see ``check_training_labels``). Runs before anything
    is recorded, so bad data, or a K that no identity can fill, leaves no failed MLflow run."""

    for path, stage in (
        (prepared_dir / "data.npz", "prepare"),
        (pairs_dir / "val.npz", "mine"),
    ):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: run `siamese {stage}` first (or `dvc repro train`)"
            )
    dm = SiameseDataModule(params, prepared_dir, pairs_dir)
    dm.setup()
    return dm


def run_train(
    params: Params,
    prepared_dir: str | Path,
    pairs_dir: str | Path,
    out_dir: str | Path,
    metrics_path: str | Path | None = None,
    run_name: str | None = None,
) -> dict:
    """Fit the encoder and export it to ``out_dir`` (atomically, at the end). Checkpoints go to
    the scratch directory after every epoch; a rerun after a crash, a kill or an unreachable
    tracking server resumes from the last one (``train.resume``)."""

    prepared_dir, pairs_dir, out_dir = Path(prepared_dir), Path(pairs_dir), Path(out_dir)
    pl.seed_everything(params.seed, workers=True, verbose=False)
    launcher = _is_launcher()
    scratch = scratch_dir(out_dir)
    dm = validate_training_data(params, prepared_dir, pairs_dir)  # before the MLflow run
    # Lightning's MLFlowLogger exports the URI globally; keep that inside this stage
    with active_tracking_uri(tracking_uri()):
        if launcher:
            # DDP children launched during fit() inherit the run id and the checkpoint to resume
            begun = _begin(params, prepared_dir, pairs_dir, scratch, run_name)
            os.environ[RUN_ID_ENV] = begun["run_id"]
            os.environ[RESUME_ENV] = begun["ckpt"]
        try:
            summary = _fit(params, dm, out_dir, scratch, launcher)
        finally:
            if launcher:
                os.environ.pop(RUN_ID_ENV, None)
                os.environ.pop(RESUME_ENV, None)
        if summary:
            if begun["resumed_after_epoch"] is not None:
                summary["resumed_after_epoch"] = begun["resumed_after_epoch"]
            _finish(summary, begun["run_id"], out_dir, scratch, metrics_path)
        return summary


def _fit(
    params: Params,
    dm: SiameseDataModule,
    out_dir: Path,
    scratch: Path,
    launcher: bool,
) -> dict:

    run_id = os.environ[RUN_ID_ENV]
    resume_from = os.environ.get(RESUME_ENV) or None
    module = SiameseModule(params, dm.val_pairs, dm.val_images)
    t, tr = params.train, params.trainer
    # which weights are exported: the best validation epoch by AUC or pair loss, or the last
    # (AUC saturates at 1.0 on a handful of validation identities, and ties never improve)
    monitor, mode = MONITORS[t.monitor]
    ckpt = ModelCheckpoint(
        dirpath=scratch / "checkpoints", filename="best", monitor=monitor, mode=mode
    )
    last_ckpt = SaveLastCheckpoint(scratch / "checkpoints" / "last.ckpt")
    callbacks = [ckpt, last_ckpt]
    if t.monitor != "last":
        callbacks.append(
            EarlyStopping(monitor=monitor, mode=mode, patience=t.early_stopping_patience)
        )
    logger = MLFlowLogger(
        experiment_name=params.register.experiment, tracking_uri=tracking_uri(), run_id=run_id
    )
    trainer = pl.Trainer(
        accelerator=tr.accelerator,
        devices=tr.devices,
        num_nodes=tr.num_nodes,
        strategy=tr.strategy,
        precision=tr.precision,
        deterministic=tr.deterministic,
        max_epochs=t.max_epochs,
        max_time=None if t.max_minutes is None else {"minutes": t.max_minutes},
        logger=logger,
        callbacks=callbacks,
        use_distributed_sampler=False,
        log_every_n_steps=tr.log_every_n_steps,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        enable_progress_bar=False,
        default_root_dir=str(scratch),
    )
    started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=resume_from)
    except BaseException as err:
        if not launcher:
            raise
        _mark_failed(run_id, err)
        if not last_ckpt.path.is_file():
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

    best_path = ckpt.best_model_path or str(last_ckpt.path)
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    module.load_state_dict(best["state_dict"])
    # read progress from the checkpoint: under ddp_spawn this process's trainer never stepped
    last_epoch, global_steps = checkpoint_progress(last_ckpt.path)
    score_key = f"best_val_{t.monitor}" if monitor else "last_val_roc_auc"
    score = ckpt.best_model_score if monitor else trainer.callback_metrics.get("val/roc_auc")
    summary = {
        score_key: float(score) if score is not None else float("nan"),
        "epochs_trained": last_epoch + 1,
        "global_steps": global_steps,
        "world_size": int(trainer.world_size),
        "fit_seconds": round(time.perf_counter() - started, 1),
    }
    # the encoder is exported now; _finish publishes it once the tracking server has the run
    export_encoder(module, scratch)
    return summary


def _mark_failed(run_id: str, err: BaseException) -> None:
    """Best effort: an unreachable tracking server must not hide the original error."""

    if is_tracking_unreachable(err):
        return
    try:
        tracking.client().set_terminated(run_id, "FAILED")
    except Exception as mark_err:  # the server went away meanwhile
        log.warning("could not mark MLflow run %s as FAILED: %s", run_id, mark_err)


def _finish(
    summary: dict, run_id: str, out_dir: Path, scratch: Path, metrics_path: str | Path | None
) -> None:
    """Every tracking call first, then the files: if the server fails here the scratch (and so
    the resume point) is still there and nothing downstream sees a finished training."""

    client = tracking.client()
    for k, v in summary.items():
        if np.isfinite(v):
            client.log_metric(run_id, f"train.{k}", float(v))
    client.set_terminated(run_id, "FINISHED")
    with atomic_dir(out_dir) as tmp:
        shutil.move(str(scratch / "checkpoints"), tmp / "checkpoints")
        for name in ("model.pt", "model.json"):
            shutil.move(str(scratch / name), tmp / name)
        write_json(tmp / "run.json", {"run_id": run_id, "tracking_uri": tracking_uri()})
    write_json(metrics_path or out_dir.parent / "train_metrics.json", summary)
    shutil.rmtree(scratch, ignore_errors=True)
