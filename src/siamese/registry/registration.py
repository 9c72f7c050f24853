"""Registration mechanics the register stage wires: the evaluation recorded on the training run,
the pyfunc model logged into it, the registered model ensured, and the versions an interrupted
registration left pending removed again (so the registry never keeps half a registration)."""

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

from siamese.config import ServeParams, flatten
from siamese.io import read_json
from siamese.models.loading import CONFIG_FILE
from siamese.registry.aliases import (
    CHALLENGER,
    PREVIOUS_CHALLENGER_TAG,
    REGISTRATION_TAG,
    alias_version,
)
from siamese.registry.package import build_package, pyfunc_kwargs

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


def log_run_results(client, run_id: str, calibration: dict, test: dict, eval_dir: Path) -> None:
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


def log_model(run_id: str, model_dir: Path, calibration_path: Path, serve: ServeParams) -> str:
    """Log the pyfunc into the run as a model from code: safetensors weights, preprocessing and
    calibration JSON, the siamese package as code; returns its URI."""

    calibration = read_json(calibration_path)
    image_size = read_json(model_dir / CONFIG_FILE)["image_size"]
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = build_package(
            model_dir,
            calibration,
            serve.max_pixels,
            tmp,
            max_request_bytes=serve.max_request_bytes,
            max_rows=serve.max_rows,
            chunk_images=serve.chunk_images,
        )
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(name="model", **pyfunc_kwargs(artifacts, image_size))
    return info.model_uri


def ensure_registered_model(client, name: str) -> None:
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
