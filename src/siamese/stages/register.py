"""register: log the pyfunc model into the training run and register a version as
``challenger``. Whether it becomes ``champion`` is the promote stage's decision
(siamese.stages.promote), taken on the benchmark pairs against the current champion.

A failure after the version exists deletes that version again (and gives the challenger alias
back to the previous challenger), so the registry never holds half a registration."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from siamese.config import Params, ServeParams, flatten
from siamese.io import atomic_dir, read_json, write_json
from siamese.registry import tracking
from siamese.registry.aliases import (
    CHALLENGER,
    PREVIOUS_CHALLENGER_TAG,
    REGISTRATION_TAG,
    alias_version,
)
from siamese.registry.package import build_package, pyfunc_kwargs
from siamese.registry.tracking import active_tracking_uri, tracking_uri

log = logging.getLogger(__name__)


def _flat_metrics(prefix: str, report: dict) -> dict[str, float]:
    """Nested report -> dotted MLflow metric keys (CIs become e.g. test.ci.roc_auc.low)."""

    out = {}
    for k, v in flatten(report, prefix).items():
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, int | float) and np.isfinite(v):
            out[k] = float(v)
    return out


def _log_run_results(client, run_id: str, calibration: dict, test: dict, eval_dir: Path) -> None:

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
    for f in sorted(eval_dir.iterdir()):
        if f.suffix in (".json", ".csv"):
            client.log_artifact(run_id, str(f), artifact_path="evaluation")
    client.log_artifacts(run_id, str(eval_dir / "figures"), artifact_path="evaluation")


def _log_model(run_id: str, model_dir: Path, calibration_path: Path, serve: ServeParams) -> str:
    """Log the pyfunc into the run as a model from code: safetensors weights, preprocessing and
    calibration JSON, the siamese package as code; returns its URI."""

    calibration = read_json(calibration_path)
    image_size = read_json(model_dir / "model.json")["image_size"]
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = build_package(
            model_dir, calibration, serve.max_pixels, tmp, max_request_bytes=serve.max_request_bytes
        )
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(name="model", **pyfunc_kwargs(artifacts, image_size))
    return info.model_uri


def _ensure_registered_model(client, name: str) -> None:

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description="Siamese verification model: image pair -> distance and decision"
        )


def remove_unfinished_versions(client, name: str, run_id: str) -> list[str]:
    """Delete the versions of ``run_id`` that an interrupted register left pending, giving the
    challenger alias back to the version it had before; the versions removed."""

    try:
        versions = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(err, "error_code", "")):
            return []
        raise
    removed = []
    for mv in versions:
        tags = mv.tags or {}
        if tags.get(REGISTRATION_TAG) != "pending":
            continue
        had_alias = CHALLENGER in (mv.aliases or [])
        log.warning("removing %s v%s: an interrupted registration of this run", name, mv.version)
        client.delete_model_version(name, mv.version)
        previous = tags.get(PREVIOUS_CHALLENGER_TAG)
        if had_alias and previous and alias_version(client, name, CHALLENGER) is None:
            with contextlib.suppress(MlflowException):  # the previous one may be gone too
                client.set_registered_model_alias(name, CHALLENGER, previous)
        removed.append(str(mv.version))
    return removed


def run_register(
    params: Params,
    prepared_dir: str | Path,
    pairs_dir: str | Path,
    model_dir: str | Path,
    calibration_dir: str | Path,
    eval_dir: str | Path,
    out_dir: str | Path,
) -> dict:

    model_dir, eval_dir = Path(model_dir), Path(eval_dir)
    uri = tracking_uri()
    client = tracking.client(uri)
    name = params.register.model_name
    run_id = read_json(model_dir / "run.json")["run_id"]
    calibration_path = Path(calibration_dir) / "calibration.json"
    calibration = read_json(calibration_path)
    test = read_json(eval_dir / "metrics.json")

    removed = remove_unfinished_versions(client, name, run_id)
    _log_run_results(client, run_id, calibration, test, eval_dir)
    with active_tracking_uri(uri):
        model_uri = _log_model(run_id, model_dir, calibration_path, params.serve)
    _ensure_registered_model(client, name)
    previous_challenger = alias_version(client, name, CHALLENGER)
    run = client.get_run(run_id)
    version_tags = {
        "git_commit": run.data.tags.get("git_commit", "unknown"),
        "test.roc_auc": f"{test['roc_auc']:.6f}",
        "calibration.threshold": f"{calibration['threshold']:.6f}",
        **{k: v for k, v in run.data.tags.items() if k.startswith(("data.", "dvc."))},
        REGISTRATION_TAG: "pending",
    }
    if previous_challenger is not None:
        version_tags[PREVIOUS_CHALLENGER_TAG] = previous_challenger
    # the version is created last; anything failing after it removes it again
    # a tracking server checks that a models:/<model id> source names its logged model
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    mv = client.create_model_version(
        name, model_uri, run_id=run_id, tags=version_tags, model_id=model_id
    )
    try:
        client.set_registered_model_alias(name, CHALLENGER, mv.version)
        log.info(
            "alias %s of %s: %s -> v%s (registered)",
            CHALLENGER,
            name,
            f"v{previous_challenger}" if previous_challenger else "none",
            mv.version,
        )
        # the last registry write: from here on the version is whole
        client.set_model_version_tag(name, mv.version, REGISTRATION_TAG, "complete")
        result = {
            "model_name": name,
            "version": str(mv.version),
            "aliases": [CHALLENGER],
            "run_id": run_id,
            "experiment_id": run.info.experiment_id,
            "model_uri": f"models:/{name}/{mv.version}",
            "previous_challenger": previous_challenger,
            "test": test,
            "threshold": calibration["threshold"],
            "tracking_uri": uri,
            "removed_unfinished_versions": removed,
        }
        with atomic_dir(out_dir) as tmp_out:
            write_json(tmp_out / "registration.json", result)
    except BaseException as err:
        log.error("registration failed after creating %s v%s; deleting it", name, mv.version)
        try:
            client.delete_model_version(name, mv.version)
            if previous_challenger is not None:
                client.set_registered_model_alias(name, CHALLENGER, previous_challenger)
        except Exception as cleanup_err:
            # the server is gone: the version stays tagged pending, promote refuses it, and the
            # next register of this run deletes it
            log.error(
                "could not delete %s v%s (%s); it stays marked %s=pending and the next register "
                "run removes it",
                name,
                mv.version,
                cleanup_err,
                REGISTRATION_TAG,
            )
            raise err from None
        raise
    return result
