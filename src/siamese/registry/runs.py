"""The MLflow run of a training: created with its params and provenance tags, looked up and
reopened when an interrupted training resumes, marked failed, or given its final metrics and
closed; and the Lightning logger that streams the epoch metrics into it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path, PurePath

import numpy as np
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.utils.mlflow_tags import (
    MLFLOW_DATASET_CONTEXT,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_RUN_NAME,
    MLFLOW_RUN_NOTE,
)
from pytorch_lightning.loggers import MLFlowLogger

from siamese.config import Params, flatten
from siamese.data.artifacts import pairs_path
from siamese.data.manifests import is_manifest
from siamese.io import file_md5
from siamese.registry import tracking
from siamese.registry.tracking import (
    dvc_dir_hash,
    ensure_experiment,
    git_info,
    is_tracking_unreachable,
    tracking_uri,
)

log = logging.getLogger(__name__)
PARAM_BATCH = 100  # params per log_batch call (MLflow's limit)
PARAM_VALUE_CHARS = 6000  # MLflow's longest param value
SHORT_HASH = 8  # hex digits of the fingerprint in a run's name
BUILT_IN = "digits"
RESULTS_HEADING = "**Test results**"
SYSTEM_METRICS_INTERVAL_S = 10  # MLflow's default; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL wins
# `siamese sweep` runs each grid point as a DVC experiment whose train stage creates the point's
# run: these variables (set by the sweep for the stage processes) make that run a child of the
# sweep's parent run and name the point (its DVC experiment) on it
PARENT_RUN_ENV = "SIAMESE_PARENT_RUN_ID"
SWEEP_POINT_ENV = "SIAMESE_SWEEP_POINT"
SWEEP_POINT_TAG = "siamese.sweep.point"
SWEEP_TAG = "siamese.sweep"  # on the parent run: the grid, as JSON


def dataset_name(source: str) -> str:
    """A short name for ``data.source``: ``digits``, the folder / archive name without its
    suffix (``../shared/data/att_faces`` -> ``att_faces``), or a manifest's folder and table
    name (``data/lfw/manifest.csv`` -> ``lfw-manifest``: tables are often named alike)."""
    if source == BUILT_IN:
        return source
    path = PurePath(source)
    if is_manifest(path):
        return f"{path.parent.name}-{path.stem}" if path.parent.name else path.stem
    return path.name.removesuffix(path.suffix) if path.suffix == ".zip" else path.name


def params_md5(params: Params) -> str:
    """The hash of every resolved param (the ``params.md5`` tag): equal params, equal hash."""
    text = json.dumps(params.model_dump(mode="json"), sort_keys=True)
    return hashlib.md5(text.encode()).hexdigest()


def default_run_name(params: Params, fingerprint: str) -> str:
    """``<dataset>-<encoder>-<loss>-<hash>``: what sets runs apart at a glance in the MLflow UI;
    the hash (of the training params and data, see ``resume.fingerprint``) tells apart runs that
    differ in anything else."""
    return (
        f"{dataset_name(params.data.source)}-{params.model.encoder}-{params.train.loss}-"
        f"{fingerprint[:SHORT_HASH]}"
    )


def _datasets(params: Params, prepared_dir: Path, pairs_dir: Path) -> list[DatasetInput]:
    """The run's train, validation and test data as MLflow dataset inputs (the run page's and
    the runs table's Datasets): named after ``data.source``, their source the artefact, their
    digest its DVC hash (the prepared images' ``<md5>.dir``, the pair files' md5)."""
    name = dataset_name(params.data.source)
    profile = json.dumps({"data.source": params.data.source})
    items = [
        ("train", prepared_dir, dvc_dir_hash(prepared_dir)),
        ("validation", pairs_path(pairs_dir, "val"), file_md5(pairs_path(pairs_dir, "val"))),
        ("test", pairs_path(pairs_dir, "test"), file_md5(pairs_path(pairs_dir, "test"))),
    ]
    inputs = []
    for context, path, digest in items:
        dataset = Dataset(  # MLflow's "local" source: {"uri": file URI}
            name=f"{name}-{context}",
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": Path(path).resolve().as_uri()}),
            profile=profile,
        )
        inputs.append(DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    return inputs


def describe_run(params: Params, tags: dict[str, str]) -> str:
    """The run's description (``mlflow.note.content``, Markdown): what was trained on what, with
    which code; the register stage appends the test results."""
    commit = tags.get("git_commit", "unknown")
    dirty = " (with uncommitted changes)" if tags.get("git_dirty") == "true" else ""
    return (
        f"{params.model.encoder} encoder ({params.model.embedding_dim}-d) trained with the "
        f"{params.train.loss} loss ({params.train.miner} mining) on `{params.data.source}`.\n\n"
        f"- data: prepared `{tags['data.prepared_dvc']}`, pairs `{tags['data.pairs_md5']}`\n"
        f"- params: `{tags['params.md5']}`\n"
        f"- code: commit `{commit}`{dirty}\n"
        f"- registered model: `{params.register.model_name}`\n"
    )


def start_run(
    params: Params,
    prepared_dir: Path,
    pairs_dir: Path,
    prepared_md5: str,
    pairs_md5: str,
    run_name: str | None,
    fingerprint: str | None = None,
) -> str:
    """A new training run in the params' experiment (``register.experiment``, else one per
    registered model), named after what sets it apart, tagged with the code (git, also as
    MLflow's ``mlflow.source.*``), the data and params hashes, described, with its train /
    validation / test datasets as inputs, dvc.lock as an artefact and every param; its id."""
    client = tracking.client()
    exp_id = ensure_experiment(params.register.experiment_name)
    tags = {
        **git_info(),
        "stage": "train",
        MLFLOW_RUN_NAME: run_name or default_run_name(params, fingerprint or params_md5(params)),
        "data.source": params.data.source,
        "data.prepared_md5": prepared_md5,
        "data.prepared_dvc": dvc_dir_hash(prepared_dir),
        "data.pairs_md5": pairs_md5,
        "params.md5": params_md5(params),
    }
    tags[MLFLOW_RUN_NOTE] = describe_run(params, tags)
    tags.update(sweep_tags())
    run = client.create_run(exp_id, tags=tags)
    run_id = run.info.run_id
    flat = flatten(params.model_dump(mode="json"))
    entries = [Param(k, str(v)[:PARAM_VALUE_CHARS]) for k, v in flat.items()]
    with ended_failed_on_error(run_id):
        for i in range(0, len(entries), PARAM_BATCH):
            client.log_batch(run_id, params=entries[i : i + PARAM_BATCH])
        client.log_inputs(run_id, datasets=_datasets(params, prepared_dir, pairs_dir))
        if Path("dvc.lock").is_file():  # every stage's dep/out hashes: one file, not ~40 tags
            client.log_artifact(run_id, "dvc.lock", artifact_path="dvc")
    return run_id


def sweep_tags() -> dict[str, str]:
    """The parent-run and point tags of a training that a sweep started (none otherwise)."""
    tags = {}
    if os.environ.get(PARENT_RUN_ENV):
        tags[MLFLOW_PARENT_RUN_ID] = os.environ[PARENT_RUN_ENV]
    if os.environ.get(SWEEP_POINT_ENV):
        tags[SWEEP_POINT_TAG] = os.environ[SWEEP_POINT_ENV]
    return tags


def start_sweep_run(
    params: Params, project_dir: Path, axes: dict[str, list], n_points: int, target: str
) -> str:
    """The parent run of a sweep, in the experiment the points' trainings log to (the baseline
    params' ``register.experiment_name``, created in the project's store first, so a point run in
    a temporary DVC workspace does not create it there): named ``sweep-<dataset>-<N>x-<hash>``,
    its params the swept keys with their values, described; its id."""
    client = tracking.client(tracking_uri(project_dir))
    exp_id = ensure_experiment(params.register.experiment_name, project_dir)
    grid = json.dumps(axes, sort_keys=True)
    digest = hashlib.md5(f"{grid}{params_md5(params)}".encode()).hexdigest()[:SHORT_HASH]
    name = f"sweep-{dataset_name(params.data.source)}-{n_points}x-{digest}"
    values = {k: ", ".join(json.dumps(v) for v in vals) for k, vals in axes.items()}
    lines = "".join(f"- `{k}`: {text}\n" for k, text in values.items())
    note = (
        f"Sweep of {n_points} points over `{params.data.source}`, each a DVC experiment run up "
        f"to the {target} stage (never registered or promoted); each point's training is a "
        f"child run.\n\n{lines}"
    )
    tags = {
        **git_info(project_dir),
        MLFLOW_RUN_NAME: name,
        MLFLOW_RUN_NOTE: note,
        SWEEP_TAG: grid,
        "data.source": params.data.source,
        "params.md5": params_md5(params),
    }
    run = client.create_run(exp_id, tags=tags)
    entries = [Param(f"sweep.{k}", text[:PARAM_VALUE_CHARS]) for k, text in values.items()]
    with ended_failed_on_error(run.info.run_id):
        client.log_batch(run.info.run_id, params=entries)
    return run.info.run_id


def sweep_children(client, parent_run_id: str, experiment_id: str) -> dict[str, object]:
    """The child runs of a sweep's parent, by point (``siamese.sweep.point``)."""
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.{MLFLOW_PARENT_RUN_ID} = '{parent_run_id}'"
    )
    return {r.data.tags[SWEEP_POINT_TAG]: r for r in found if SWEEP_POINT_TAG in r.data.tags}


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
        experiment_name=params.register.experiment_name, tracking_uri=tracking_uri(), run_id=run_id
    )


@contextlib.contextmanager
def system_metrics(run_id: str) -> Iterator[None]:
    """Sample CPU, memory, disk, network (and GPU where one is visible) into the run's
    ``system/*`` metrics while the block runs (MLflow's monitor, psutil). MLflow's monitor drops
    the samples of its last, unfinished interval, so a training shorter than one interval would
    record nothing: a final sample covering the time since the last one is logged at the end."""
    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, tracking_uri=tracking_uri()
    )
    monitor.start()
    try:
        yield
    except BaseException:
        monitor.finish()  # a failed training (maybe a lost server) waits for no final sample
        raise
    monitor.finish()
    try:
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
    except Exception as err:  # best effort: the trained model matters more than its CPU curve
        log.warning("could not log the final system metrics of run %s: %s", run_id, err)


def _flat_metrics(prefix: str, report: dict) -> dict[str, float]:
    """Nested report -> dotted MLflow metric keys (CIs become e.g. test.ci.roc_auc.low)."""

    out = {}
    for k, v in flatten(report, prefix).items():
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, int | float) and np.isfinite(v):
            out[k] = float(v)
    return out


def log_result_metrics(client, run_id: str, calibration: dict, test: dict) -> None:
    """The calibration (threshold, its CI, the validation report) and the test report as the
    run's metrics (``calibration.*``, ``val.*``, ``test.*``): what the MLflow runs table and its
    compare view show side by side. Register logs them; a sweep logs them on each point's run,
    since a sweep stops before register."""
    ts = int(time.time() * 1000)
    values = {"calibration.threshold": calibration["threshold"]}
    values.update(_flat_metrics("calibration.threshold_ci.", calibration.get("threshold_ci") or {}))
    values.update(_flat_metrics("val.", calibration["val"]))
    values.update(_flat_metrics("test.", test))
    entries = [Metric(k, v, ts, 0) for k, v in values.items()]
    for i in range(0, len(entries), 500):
        client.log_batch(run_id, metrics=entries[i : i + 500])
    client.set_tag(run_id, "calibration.strategy", calibration["strategy"])
    client.set_tag(run_id, "calibration.target", str(calibration.get("target")))
    client.set_tag(run_id, "calibration.probability", calibration["probability"]["method"])


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "n/a"


def results_summary(run_tags: dict[str, str], test: dict, threshold: float) -> str:
    """The headline of a registered model (Markdown): test metrics, the threshold, the data
    version and the commit; both the run's and the model version's description carry it."""
    tar = sorted(k for k in test if k.startswith("tar_at_far_"))
    lines = [
        f"- test ROC AUC {_number(test.get('roc_auc'))}, EER {_number(test.get('eer'))}, "
        f"accuracy {_number(test.get('accuracy'))} on {test.get('n_pairs', '?')} pairs"
        + "".join(f", {k.removeprefix('tar_at_')} TAR {_number(test[k])}" for k in tar),
        f"- threshold (distance) {_number(threshold)}",
        f"- data `{run_tags.get('data.source', '?')}`: prepared "
        f"`{run_tags.get('data.prepared_dvc', run_tags.get('data.prepared_md5', '?'))}`, "
        f"pairs `{run_tags.get('data.pairs_md5', '?')}`",
        f"- commit `{run_tags.get('git_commit', 'unknown')}`",
    ]
    return "\n".join(lines) + "\n"


def describe_results(client, run_id: str, summary: str) -> None:
    """Append the test results to the run's description (once: a rerun replaces them)."""
    run = client.get_run(run_id)
    note = run.data.tags.get(MLFLOW_RUN_NOTE, "").split(RESULTS_HEADING)[0].rstrip()
    client.set_tag(run_id, MLFLOW_RUN_NOTE, f"{note}\n\n{RESULTS_HEADING}\n{summary}".lstrip())
