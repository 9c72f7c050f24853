"""The MLflow run of a training: created with its params and provenance tags, looked up and
reopened when an interrupted training resumes, marked failed, or given its final metrics and
closed; and the Lightning logger that streams the epoch metrics into it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import numpy as np
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from pytorch_lightning.loggers import MLFlowLogger

from siamese.config import Params, flatten
from siamese.registry import tracking
from siamese.registry.tracking import (
    dvc_lock_hashes,
    ensure_experiment,
    git_info,
    is_tracking_unreachable,
    tracking_uri,
)

log = logging.getLogger(__name__)
PARAM_BATCH = 100  # params per log_batch call (MLflow's limit)
PARAM_VALUE_CHARS = 6000  # MLflow's longest param value


def start_run(params: Params, prepared_md5: str, pairs_md5: str, run_name: str | None) -> str:
    """A new training run in ``params.register.experiment``, tagged with the code (git), the
    data (its hashes and DVC's) and carrying every param; its id."""
    client = tracking.client()
    exp_id = ensure_experiment(params.register.experiment)
    tags = {**git_info(), "stage": "train", "mlflow.runName": run_name or "siamese-train"}
    tags["data.prepared_md5"] = prepared_md5
    tags["data.pairs_md5"] = pairs_md5
    tags.update(dvc_lock_hashes())
    run = client.create_run(exp_id, tags=tags)
    flat = flatten(params.model_dump(mode="json"))
    entries = [Param(k, str(v)[:PARAM_VALUE_CHARS]) for k, v in flat.items()]
    with ended_failed_on_error(run.info.run_id):
        for i in range(0, len(entries), PARAM_BATCH):
            client.log_batch(run.info.run_id, params=entries[i : i + PARAM_BATCH])
    return run.info.run_id


def run_is_active(run_id: str) -> bool:
    """Whether an interrupted training's run may take its resumed epochs: it still exists and
    is not deleted. An unreachable server raises: it is no reason to throw the checkpoint away."""
    try:
        run = tracking.client().get_run(run_id)
    except MlflowException as err:
        if is_tracking_unreachable(err):
            raise
        log.info("discarding the interrupted training: its MLflow run is gone (%s)", err)
        return False
    return run.info.lifecycle_stage == "active"


def reopen(run_id: str, resumed_after_epoch: int) -> None:
    """Set an interrupted run running again, tagged with the epoch it resumes after."""
    client = tracking.client()
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, "resumed_after_epoch", str(resumed_after_epoch))


def mark_failed(run_id: str, err: BaseException) -> None:
    """Best effort: an unreachable tracking server must not hide the original error."""
    if is_tracking_unreachable(err):
        return
    try:
        tracking.client().set_terminated(run_id, "FAILED")
    except Exception as mark_err:  # the server went away meanwhile
        log.warning("could not mark MLflow run %s as FAILED: %s", run_id, mark_err)


@contextlib.contextmanager
def ended_failed_on_error(run_id: str | None) -> Iterator[None]:
    """End the run FAILED when the block raises anything at all: an error, Ctrl-C, a SIGTERM (the
    CLI raises it as ``siamese.errors.Interrupted``) or Lightning's exit after an interrupt. A
    stage never leaves its run RUNNING, except when the server is unreachable and cannot be
    told; a resumed training reopens the run anyway. ``None``: no run of this process's own."""
    if run_id is None:
        yield
        return
    try:
        yield
    except BaseException as err:
        mark_failed(run_id, err)
        raise


def finish(run_id: str, summary: dict) -> None:
    """Log the training summary (``train.<key>``, finite values only) and close the run."""
    client = tracking.client()
    for k, v in summary.items():
        if np.isfinite(v):
            client.log_metric(run_id, f"train.{k}", float(v))
    client.set_terminated(run_id, "FINISHED")


def lightning_logger(params: Params, run_id: str) -> MLFlowLogger:
    """Lightning's logger into the existing run ``run_id`` (every DDP rank builds its own)."""
    return MLFlowLogger(
        experiment_name=params.register.experiment, tracking_uri=tracking_uri(), run_id=run_id
    )
