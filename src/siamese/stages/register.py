"""register: log the pyfunc model into the training run, register a version as ``challenger``,
and promote it to ``champion`` when it beats the current champion on the same test pairs.

A failure after the version exists deletes that version again, so the registry never holds half
a registration."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from siamese import metrics
from siamese.config import Params
from siamese.datamodule import load_pairs
from siamese.io import atomic_dir, read_json, write_json
from siamese.stages.prepare import PreparedData
from siamese.tracking import active_tracking_uri, tracking_uri

log = logging.getLogger(__name__)
CHALLENGER, CHAMPION = "challenger", "champion"


def _flat_metrics(prefix: str, report: dict) -> dict[str, float]:
    """Nested report -> dotted MLflow metric keys (CIs become e.g. test.ci.roc_auc.low)."""
    from siamese.config import flatten

    out = {}
    for k, v in flatten(report, prefix).items():
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, int | float) and np.isfinite(v):
            out[k] = float(v)
    return out


def _log_run_results(client, run_id: str, calibration: dict, test: dict, eval_dir: Path) -> None:
    from mlflow.entities import Metric

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


def _champion_score(client, name: str, test_pairs: dict, prepared_dir: str | Path) -> dict | None:
    """Score the current champion on *our* test pairs through its served interface."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from siamese.serving import pairs_frame

    try:
        champ = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    model = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
    images = PreparedData(prepared_dir).images  # only needed when there is a champion
    out = model.predict(pairs_frame(images, test_pairs["a"], test_pairs["b"]))
    d = out["distance"].to_numpy(dtype=np.float64)
    return {"version": str(champ.version), "roc_auc": metrics.roc_auc(d, test_pairs["y"])}


def _log_model(run_id: str, model_dir: Path, calibration_path: Path, max_pixels: int) -> str:
    """Log the pyfunc into the run as a model from code: safetensors weights, preprocessing and
    calibration JSON, the siamese package as code; returns its URI."""
    import mlflow

    from siamese.serving import build_package, pyfunc_kwargs

    calibration = read_json(calibration_path)
    image_size = read_json(model_dir / "model.json")["image_size"]
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = build_package(model_dir, calibration, max_pixels, tmp)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(name="model", **pyfunc_kwargs(artifacts, image_size))
    return info.model_uri


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description="Siamese verification model: image pair -> distance and decision"
        )


def run_register(
    params: Params,
    prepared_dir: str | Path,
    pairs_dir: str | Path,
    model_dir: str | Path,
    calibration_dir: str | Path,
    eval_dir: str | Path,
    out_dir: str | Path,
) -> dict:
    import mlflow

    model_dir, eval_dir = Path(model_dir), Path(eval_dir)
    uri = tracking_uri()
    client = mlflow.MlflowClient(uri)
    name = params.register.model_name
    run_id = read_json(model_dir / "run.json")["run_id"]
    calibration_path = Path(calibration_dir) / "calibration.json"
    calibration = read_json(calibration_path)
    test = read_json(eval_dir / "metrics.json")
    test_pairs = load_pairs(Path(pairs_dir) / "test.npz")

    _log_run_results(client, run_id, calibration, test, eval_dir)
    with active_tracking_uri(uri):
        model_uri = _log_model(run_id, model_dir, calibration_path, params.serve.max_pixels)
        champion = _champion_score(client, name, test_pairs, prepared_dir)
    _ensure_registered_model(client, name)
    run = client.get_run(run_id)
    version_tags = {
        "git_commit": run.data.tags.get("git_commit", "unknown"),
        "test.roc_auc": f"{test['roc_auc']:.6f}",
        "calibration.threshold": f"{calibration['threshold']:.6f}",
        **{k: v for k, v in run.data.tags.items() if k.startswith(("data.", "dvc."))},
    }
    # the version is created last; anything failing after it removes it again
    mv = client.create_model_version(name, model_uri, run_id=run_id, tags=version_tags)
    try:
        client.set_registered_model_alias(name, CHALLENGER, mv.version)
        promoted = champion is None or test["roc_auc"] > champion["roc_auc"]
        if promoted:
            client.set_registered_model_alias(name, CHAMPION, mv.version)
        result = {
            "model_name": name,
            "version": str(mv.version),
            "aliases": [CHALLENGER] + ([CHAMPION] if promoted else []),
            "run_id": run_id,
            "experiment_id": run.info.experiment_id,
            "model_uri": f"models:/{name}/{mv.version}",
            "promoted": promoted,
            "previous_champion": champion,
            "test": test,
            "threshold": calibration["threshold"],
            "tracking_uri": uri,
        }
        with atomic_dir(out_dir) as tmp_out:
            write_json(tmp_out / "registration.json", result)
    except BaseException:
        log.error("registration failed after creating %s v%s; deleting it", name, mv.version)
        client.delete_model_version(name, mv.version)
        if champion is not None:
            client.set_registered_model_alias(name, CHAMPION, champion["version"])
        raise
    return result
