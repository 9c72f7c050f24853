"""train: fit the shared encoder with Lightning and record the run in MLflow.

Wires the data module (``siamese.training.datamodule``), resuming (``siamese.training.resume``),
the fit (``siamese.training.fit``) and the MLflow run (``siamese.registry.runs``).

DDP hand-over: under ``strategy: ddp`` Lightning relaunches this command once per extra device
(under ``ddp_spawn`` it forks workers from this process). Only the launching process (rank 0 of
node 0, see :func:`_is_launcher`) decides between a fresh and a resumed training, creates or
reopens the MLflow run and reports the result; it exports the run id (``RUN_ID_ENV``) and the
checkpoint to resume from (``RESUME_ENV``, empty for a fresh start) before the fit, so the
processes Lightning launches from it log into the same run and resume from the same epoch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytorch_lightning as pl

from siamese.config import Params
from siamese.data.artifacts import IMAGES_FILE, pairs_path
from siamese.io import dir_md5, write_json
from siamese.registry import runs
from siamese.registry.names import check_tracking_names
from siamese.registry.tracking import active_tracking_uri, tracking_uri
from siamese.training import resume
from siamese.training.datamodule import SiameseDataModule
from siamese.training.fit import fit_encoder
from siamese.training.module import check_model
from siamese.training.settings import check_trainer

log = logging.getLogger(__name__)
RUN_ID_ENV = "SIAMESE_MLFLOW_RUN_ID"
RESUME_ENV = "SIAMESE_RESUME_CKPT"


def _is_launcher() -> bool:
    """Whether this is the process the user started, not one Lightning's DDP launched."""
    return "LOCAL_RANK" not in os.environ and os.environ.get("NODE_RANK", "0") == "0"


@contextlib.contextmanager
def _handed_over(run_id: str, ckpt: str) -> Iterator[None]:
    """Export the run id and the checkpoint to the DDP processes launched within the block."""
    os.environ[RUN_ID_ENV] = run_id
    os.environ[RESUME_ENV] = ckpt
    try:
        yield
    finally:
        os.environ.pop(RUN_ID_ENV, None)
        os.environ.pop(RESUME_ENV, None)


def _begin(
    params: Params, prepared_dir: Path, pairs_dir: Path, scratch: Path, run_name: str | None
) -> dict:
    """Start a fresh training (new MLflow run, empty scratch) or resume an interrupted one."""
    prepared_md5, pairs_md5 = dir_md5(prepared_dir), dir_md5(pairs_dir)
    fingerprint = resume.fingerprint(params, prepared_md5, pairs_md5)
    found = (
        resume.resumable(scratch, fingerprint, runs.run_is_active) if params.train.resume else None
    )
    if found is not None:
        run_id, ckpt = found
        epoch, _ = resume.checkpoint_progress(ckpt)
        with runs.ended_failed_on_error(run_id):
            runs.reopen(run_id, epoch)
        log.warning(
            "resuming the interrupted training (MLflow run %s) from %s, after epoch %d",
            run_id,
            ckpt,
            epoch,
        )
        return {"run_id": run_id, "ckpt": str(ckpt), "resumed_after_epoch": epoch}
    resume.reset(scratch)
    run_id = runs.start_run(
        params, prepared_dir, pairs_dir, prepared_md5, pairs_md5, run_name, fingerprint
    )
    with runs.ended_failed_on_error(run_id):
        resume.record(scratch, run_id, fingerprint)
    return {"run_id": run_id, "ckpt": "", "resumed_after_epoch": None}


def validate_training_data(
    params: Params, prepared_dir: Path, pairs_dir: Path
) -> SiameseDataModule:
    """The data module, loaded and checked (see ``check_training_labels``). Runs before anything
    is recorded, so bad data, or a K that no identity can fill, leaves no failed MLflow run."""
    for path, stage in (
        (prepared_dir / IMAGES_FILE, "prepare"),
        (pairs_path(pairs_dir, "val"), "mine"),
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
    scratch = resume.scratch_dir(out_dir)
    if launcher:  # before the MLflow run: Lightning takes the trainer settings here, and MLflow
        check_trainer(params)  # the names, or nothing is trained that cannot be registered
        check_tracking_names(params)
        check_model(params)  # model.encoder built, model.pretrained loaded: before the run
    dm = validate_training_data(params, prepared_dir, pairs_dir)  # before the MLflow run
    # Lightning's MLFlowLogger exports the URI globally; keep that inside this stage
    with active_tracking_uri(tracking_uri()), _scratch_dropped_unless_resumable(scratch):
        if launcher:
            begun = _begin(params, prepared_dir, pairs_dir, scratch, run_name)
            handover = _handed_over(begun["run_id"], begun["ckpt"])
            # CPU, memory, ... of this machine while it trains (one sampler, not one per rank)
            monitor = runs.system_metrics(begun["run_id"])
        else:  # a DDP child: the launcher handed the run and the checkpoint over
            handover, monitor = contextlib.nullcontext(), contextlib.nullcontext()
        # from here on, whatever stops the stage (an error, Ctrl-C, SIGTERM, a full disk while
        # publishing) ends the launcher's run FAILED; the previous artifacts/train stays
        with runs.ended_failed_on_error(begun["run_id"] if launcher else None), handover:
            run_id = os.environ[RUN_ID_ENV]
            with monitor:  # sampling ends with the fit, before the run is finished
                summary = fit_encoder(
                    params,
                    dm,
                    scratch,
                    runs.lightning_logger(params, run_id),
                    resume_from=os.environ.get(RESUME_ENV) or None,
                    launcher=launcher,
                )
            if summary:
                if begun["resumed_after_epoch"] is not None:
                    summary["resumed_after_epoch"] = begun["resumed_after_epoch"]
                _finish(summary, begun["run_id"], out_dir, scratch, metrics_path)
        return summary


@contextlib.contextmanager
def _scratch_dropped_unless_resumable(scratch: Path) -> Iterator[None]:
    """A training that stops before its first epoch checkpoint leaves nothing to resume from: its
    scratch directory goes too, so a failed stage leaves no partial file under artifacts/."""
    try:
        yield
    except BaseException:
        if not resume.last_checkpoint(scratch).is_file():
            shutil.rmtree(scratch, ignore_errors=True)
        raise


def _finish(
    summary: dict, run_id: str, out_dir: Path, scratch: Path, metrics_path: str | Path | None
) -> None:
    """Every tracking call first, then the files: if the server fails here the scratch (and so
    the resume point) is still there and nothing downstream sees a finished training."""
    runs.finish(run_id, summary)
    resume.publish(scratch, out_dir, {"run_id": run_id, "tracking_uri": tracking_uri()})
    write_json(metrics_path or out_dir.parent / "train_metrics.json", summary)
    shutil.rmtree(scratch, ignore_errors=True)
