"""register: log the pyfunc model into the training run and register a version as
``challenger``. Whether it becomes ``champion`` is the promote stage's decision
(siamese.stages.promote), taken on the benchmark pairs against the current champion.

A failure after the version exists deletes that version again (and gives the challenger alias
back to the previous challenger), so the registry never holds half a registration.

One model, one version: every version is tagged with the digest of the package it serves
(weights, architecture, preprocessing, calibration, code). Registering a package that a version
already serves creates no new version: the challenger alias points to that version instead
(a retraining that reproduced the same model, a rerun after a lost DVC cache). When that
version's files were lost from the artifact store, they are uploaded again in place.

The registry may lack what ``artifacts/train`` recorded: its MLflow run (``run.json``) is gone
when ``mlflow.db`` was lost or MLFLOW_TRACKING_URI points to another store. A plain register then
stops with a ``RegistryStateError`` naming ``siamese register --force``, which registers the
exported model in a new run re-created from the exported training (``siamese run`` does that by
itself, see :func:`siamese.registry.versions.registry_gaps`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from mlflow.exceptions import MlflowException

from siamese.config import Params
from siamese.data.artifacts import PreparedData, load_pairs, pairs_path
from siamese.errors import RegistryStateError
from siamese.io import atomic_dir, dir_md5, read_json, write_json
from siamese.models.onnx import PARITY_IMAGES
from siamese.registry import runs, tracking
from siamese.registry.aliases import (
    CHALLENGER,
    PREVIOUS_CHALLENGER_TAG,
    REGISTRATION_TAG,
    alias_version,
)
from siamese.registry.names import check_tracking_names
from siamese.registry.registration import (
    built_package,
    ensure_registered_model,
    log_model,
    log_run_results,
    recreate_run,
    remove_unfinished_versions,
    restore_model_files,
)
from siamese.registry.tracking import (
    active_tracking_uri,
    is_tracking_unreachable,
    run_exists,
    tracking_uri,
)
from siamese.registry.versions import (
    MODEL_DIGEST_TAG,
    PACKAGE_DIGEST_TAG,
    RUN_FILE,
    missing_files,
    versions_with,
)

log = logging.getLogger(__name__)
REGISTERED_AS_TAG = "siamese.registered_as"  # on a training run whose model a version served
ONNX_TAG = "siamese.onnx"  # on the run and the version: the package's ONNX export, or why none


def run_register(
    params: Params,
    prepared_dir: str | Path,
    pairs_dir: str | Path,
    model_dir: str | Path,
    calibration_dir: str | Path,
    eval_dir: str | Path,
    out_dir: str | Path,
    force: bool = False,
) -> dict:
    """Register the exported model as ``challenger``, or point the alias to the version that
    already serves the same package. ``force``: when the tracking store lacks the training run,
    re-create the run from the exported training instead of stopping."""
    check_tracking_names(params)  # before any registry write
    model_dir, eval_dir = Path(model_dir), Path(eval_dir)
    uri = tracking_uri()
    client = tracking.client(uri)
    name = params.register.model_name
    run_id = read_json(model_dir / RUN_FILE)["run_id"]
    calibration_path = Path(calibration_dir) / "calibration.json"
    calibration = read_json(calibration_path)
    test = read_json(eval_dir / "metrics.json")
    result = {
        "model_name": name,
        "aliases": [CHALLENGER],
        "test": test,
        "threshold": calibration["threshold"],
        "tracking_uri": uri,
        "train_run_id": run_id,
        "reused_version": False,
        "recreated_run": False,
    }
    # versions an interrupted register of this run left pending go first (never reused)
    result["removed_unfinished_versions"] = remove_unfinished_versions(client, name, run_id)
    sample = parity_images(prepared_dir, pairs_dir) if params.serve.export_onnx else None
    with built_package(model_dir, calibration_path, params.serve, sample) as package:
        result["package_sha256"] = package.package_digest
        result["model_sha256"] = package.model_digest
        result["onnx"] = package.onnx
        log.info("ONNX: %s", package.onnx)
        same = _version_serving(client, name, package, uri)
        if same is not None:
            mv, restored = same
            result.update(_reuse(client, name, mv, run_id), restored_files=restored)
            with atomic_dir(out_dir) as tmp_out:
                write_json(tmp_out / "registration.json", result)
            return result
        if not run_exists(client, run_id):
            if not force:
                raise RegistryStateError(_lost_run_message(run_id, uri, model_dir))
            run_id = recreate_run(
                client,
                params,
                run_id,
                Path(prepared_dir),
                Path(pairs_dir),
                dir_md5(prepared_dir),
                dir_md5(pairs_dir),
                _train_summary(model_dir),
            )
            result["recreated_run"] = True
        result["run_id"] = run_id
        log_run_results(client, run_id, calibration, test, eval_dir)
        client.set_tag(run_id, ONNX_TAG, package.onnx)
        with active_tracking_uri(uri):
            model_uri = log_model(run_id, package.artifacts, package.image)
    tags = {
        PACKAGE_DIGEST_TAG: package.package_digest,
        MODEL_DIGEST_TAG: package.model_digest,
        ONNX_TAG: package.onnx,
    }
    return _create_version(client, name, run_id, model_uri, tags, result, out_dir)


def parity_images(prepared_dir: str | Path, pairs_dir: str | Path) -> np.ndarray:
    """The real images the ONNX export is checked on: the first ``PARITY_IMAGES`` distinct
    images of the validation pairs (the ones calibration embedded)."""
    pairs = load_pairs(pairs_path(pairs_dir, "val"))
    rows = np.unique(np.r_[pairs["a"], pairs["b"]])[:PARITY_IMAGES]
    return np.array(PreparedData(prepared_dir).images[rows])


def _version_serving(client, name: str, package, uri: str) -> tuple[object, list[str]] | None:
    """The version that already serves this package, with the files uploaded again if the
    artifact store lost them (the version, the files that were missing), or None.

    The same package (model and code) is reused as it is. A version of the same model whose
    files are gone is restored with this package even when its code differs: its weights and
    calibration are the ones it was promoted with, and the alternative is no model at all."""
    same = versions_with(client, name, PACKAGE_DIGEST_TAG, package.package_digest)
    if same:
        return same[0], _restore_if_lost(client, name, same[0], package, uri)
    for mv in versions_with(client, name, MODEL_DIGEST_TAG, package.model_digest):
        if missing_files(client, name, mv.version, uri):
            return mv, _restore_if_lost(client, name, mv, package, uri)
    return None


def _create_version(
    client, name: str, run_id: str, model_uri: str, tags: dict, result: dict, out_dir: Path
) -> dict:
    """Create the version (last), give it the challenger alias, mark it complete and publish
    registration.json; anything failing after the version exists removes it again."""
    ensure_registered_model(client, name)
    previous_challenger = alias_version(client, name, CHALLENGER)
    run = client.get_run(run_id)
    test, calibration_threshold = result["test"], result["threshold"]
    summary = runs.results_summary(run.data.tags, test, calibration_threshold)
    runs.describe_results(client, run_id, summary)
    version_tags = {
        "git_commit": run.data.tags.get("git_commit", "unknown"),
        "test.roc_auc": f"{test['roc_auc']:.6f}",
        "calibration.threshold": f"{calibration_threshold:.6f}",
        **{k: v for k, v in run.data.tags.items() if k.startswith(("data.", "dvc."))},
        **tags,
        REGISTRATION_TAG: "pending",
    }
    if previous_challenger is not None:
        version_tags[PREVIOUS_CHALLENGER_TAG] = previous_challenger
    # the version is created last; anything failing after it removes it again
    # a tracking server checks that a models:/<model id> source names its logged model
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    mv = client.create_model_version(
        name,
        model_uri,
        run_id=run_id,
        tags=version_tags,
        model_id=model_id,
        description=f"Run `{run.info.run_name}`\n\n{summary}",
    )
    try:
        client.set_registered_model_alias(name, CHALLENGER, mv.version)
        _log_alias(name, previous_challenger, mv.version, "registered")
        # the last registry write: from here on the version is whole
        client.set_model_version_tag(name, mv.version, REGISTRATION_TAG, "complete")
        result.update(
            version=str(mv.version),
            experiment_id=run.info.experiment_id,
            model_uri=f"models:/{name}/{mv.version}",
            previous_challenger=previous_challenger,
        )
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


def _log_alias(name: str, before: str | None, after, why: str) -> None:
    log.info(
        "alias %s of %s: %s -> v%s (%s)",
        CHALLENGER,
        name,
        f"v{before}" if before else "none",
        after,
        why,
    )


def _reuse(client, name: str, mv, train_run_id: str) -> dict:
    """Point the challenger alias to ``mv``, which already serves this exact package, instead of
    registering a duplicate; the training run (when the store has it) is tagged with it."""
    version = str(mv.version)
    previous_challenger = alias_version(client, name, CHALLENGER)
    if previous_challenger != version:
        client.set_registered_model_alias(name, CHALLENGER, version)
        _log_alias(name, previous_challenger, version, "same package as this version")
    log.warning(
        "%s v%s already serves this exact model (%s %s); no new version registered",
        name,
        version,
        MODEL_DIGEST_TAG,
        (mv.tags or {}).get(MODEL_DIGEST_TAG, "")[:12],
    )
    if train_run_id != mv.run_id and run_exists(client, train_run_id):
        client.set_tag(train_run_id, REGISTERED_AS_TAG, f"{name}/{version}")
    try:
        experiment_id = client.get_run(mv.run_id).info.experiment_id
    except MlflowException as err:
        if is_tracking_unreachable(err):
            raise
        experiment_id = None
    return {
        "version": version,
        "run_id": mv.run_id,
        "experiment_id": experiment_id,
        "model_uri": f"models:/{name}/{version}",
        "previous_challenger": previous_challenger,
        "reused_version": True,
    }


def _restore_if_lost(client, name: str, mv, package, uri: str) -> list[str]:
    """Upload the version's model files again when the artifact store lost them (``package``
    holds its model); the files that were missing."""
    missing = missing_files(client, name, mv.version, uri)
    if missing:
        with active_tracking_uri(uri):
            restore_model_files(client, name, mv, package)
        still = missing_files(client, name, mv.version, uri)
        if still:
            raise RegistryStateError(
                f"uploaded the model files of {name} v{mv.version} again, but {', '.join(still)} "
                "is still missing from the artifact store; check its permissions and space"
            )
    return missing


def _train_summary(model_dir: Path) -> dict:
    """The exported training's summary (artifacts/train_metrics.json), for a re-created run."""
    path = model_dir.parent / "train_metrics.json"
    try:
        summary = read_json(path)
    except (OSError, ValueError):
        log.warning("%s is missing or unreadable; the re-created run has no train.* metrics", path)
        return {}
    return {k: float(v) for k, v in summary.items() if isinstance(v, int | float)}


def _lost_run_message(run_id: str, uri: str, model_dir: Path) -> str:
    return (
        f"the MLflow run {run_id} that trained {model_dir} (its {RUN_FILE}) is not in the "
        f"tracking store {uri}: the store was lost or replaced (a deleted mlflow.db), or "
        "MLFLOW_TRACKING_URI points to another one. If the store is right, `siamese register "
        "--force` registers the exported model in a new run re-created from the exported "
        "training (`siamese run` does this by itself); `dvc repro --force train` trains it again"
    )
