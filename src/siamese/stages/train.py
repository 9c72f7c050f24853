"""train: fit the shared encoder with Lightning and record the run in MLflow.

Under ``strategy: ddp`` Lightning relaunches this command once per extra device; the launching
process (rank 0) creates the MLflow run and hands its id to the children through the environment.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from pytorch_lightning.callbacks import Callback

from siamese.config import Params, flatten
from siamese.io import atomic_dir, write_json
from siamese.tracking import (
    active_tracking_uri,
    dir_md5,
    dvc_lock_hashes,
    ensure_experiment,
    git_info,
    tracking_uri,
)

if TYPE_CHECKING:
    from siamese.datamodule import SiameseDataModule

log = logging.getLogger(__name__)
RUN_ID_ENV = "SIAMESE_MLFLOW_RUN_ID"
# train.monitor -> (logged metric, direction); "last" keeps no best checkpoint and never stops early
MONITORS = {
    "roc_auc": ("val/roc_auc", "max"),
    "pair_loss": ("val/pair_loss", "min"),
    "last": (None, "max"),
}


def _is_launcher() -> bool:
    return "LOCAL_RANK" not in os.environ and os.environ.get("NODE_RANK", "0") == "0"


def start_run(params: Params, prepared_dir: Path, pairs_dir: Path, run_name: str | None) -> str:
    import mlflow
    from mlflow.entities import Param

    client = mlflow.MlflowClient(tracking_uri())
    exp_id = ensure_experiment(params.register.experiment)
    tags = {**git_info(), "stage": "train", "mlflow.runName": run_name or "siamese-train"}
    tags["data.prepared_md5"] = dir_md5(prepared_dir)
    tags["data.pairs_md5"] = dir_md5(pairs_dir)
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
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)


def export_encoder(module, out_dir: Path) -> None:
    """Save the encoder alone as a plain state dict: loadable with weights_only=True."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.encoder.state_dict().items()}
    torch.save(state, out_dir / "model.pt")
    write_json(out_dir / "model.json", {**module.encoder.config, "preprocess": "uint8/127.5-1"})


def validate_training_data(
    params: Params, prepared_dir: Path, pairs_dir: Path
) -> SiameseDataModule:
    """The data module, loaded and checked (see ``check_training_labels``). Runs before anything
    is recorded, so bad data, or a K that no identity can fill, leaves no failed MLflow run."""
    from siamese.datamodule import SiameseDataModule

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
    import pytorch_lightning as pl

    prepared_dir, pairs_dir, out_dir = Path(prepared_dir), Path(pairs_dir), Path(out_dir)
    pl.seed_everything(params.seed, workers=True, verbose=False)
    launcher = _is_launcher()
    dm = validate_training_data(params, prepared_dir, pairs_dir)  # before the MLflow run
    # Lightning's MLFlowLogger exports the URI globally; keep that inside this stage
    with active_tracking_uri(tracking_uri()):
        if launcher:
            # a fresh run per training; DDP children launched during fit() inherit its id
            os.environ[RUN_ID_ENV] = start_run(params, prepared_dir, pairs_dir, run_name)
        try:
            return _fit(params, dm, out_dir, metrics_path, launcher)
        finally:
            if launcher:
                os.environ.pop(RUN_ID_ENV, None)


def _fit(
    params: Params,
    dm: SiameseDataModule,
    out_dir: Path,
    metrics_path: str | Path | None,
    launcher: bool,
) -> dict:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
    from pytorch_lightning.loggers import MLFlowLogger

    from siamese.module import SiameseModule

    run_id = os.environ[RUN_ID_ENV]

    # all ranks must agree on the scratch directory, so it is derived, not random
    scratch = out_dir.parent / f".{out_dir.name}.partial"
    if launcher and scratch.exists():
        shutil.rmtree(scratch)

    module = SiameseModule(params.model_dump(mode="json"), dm.val_pairs, dm.val_images)
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
        trainer.fit(module, datamodule=dm)
    except BaseException:
        if launcher:
            import mlflow

            mlflow.MlflowClient(tracking_uri()).set_terminated(run_id, "FAILED")
        raise
    if not trainer.is_global_zero or not launcher:
        return {}

    best_path = ckpt.best_model_path or str(last_ckpt.path)
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    module.load_state_dict(best["state_dict"])
    # read progress from the checkpoint: under ddp_spawn this process's trainer never stepped
    last = torch.load(last_ckpt.path, map_location="cpu", weights_only=True)
    score_key = f"best_val_{t.monitor}" if monitor else "last_val_roc_auc"
    score = ckpt.best_model_score if monitor else trainer.callback_metrics.get("val/roc_auc")
    summary = {
        score_key: float(score) if score is not None else float("nan"),
        "epochs_trained": int(last["epoch"]) + 1,
        "global_steps": int(last["global_step"]),
        "world_size": int(trainer.world_size),
        "fit_seconds": round(time.perf_counter() - started, 1),
    }
    with atomic_dir(out_dir) as tmp:
        shutil.move(str(scratch / "checkpoints"), tmp / "checkpoints")
        export_encoder(module, tmp)
        write_json(tmp / "run.json", {"run_id": run_id, "tracking_uri": tracking_uri()})
    write_json(metrics_path or out_dir.parent / "train_metrics.json", summary)
    shutil.rmtree(scratch, ignore_errors=True)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri())
    for k, v in summary.items():
        if np.isfinite(v):
            client.log_metric(run_id, f"train.{k}", float(v))
    return summary
