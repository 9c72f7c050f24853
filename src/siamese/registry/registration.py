"""Registration mechanics the register stage wires: the evaluation recorded on the training run,
the pyfunc model logged into it, the registered model ensured, and the versions an interrupted
registration left pending removed again (so the registry never keeps half a registration)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from siamese.config import Params, ServeParams
from siamese.data.images import ImageSpec
from siamese.errors import RegistryStateError
from siamese.io import read_json
from siamese.models.loading import CONFIG_FILE
from siamese.registry import runs
from siamese.registry.aliases import (
    CHALLENGER,
    PREVIOUS_CHALLENGER_TAG,
    REGISTRATION_TAG,
    alias_version,
)
from siamese.registry.package import (
    build_package,
    model_digest,
    onnx_status,
    package_digest,
    pyfunc_kwargs,
)
from siamese.registry.versions import PACKAGE_DIGEST_TAG

log = logging.getLogger(__name__)
RECREATED_TAG = "siamese.recreated_from"
RESTORED_TAG = "siamese.files_restored_at"


def log_run_results(client, run_id: str, calibration: dict, test: dict, eval_dir: Path) -> None:
    """The results' metrics (``log_result_metrics``) and the evaluation's files and figures."""
    runs.log_result_metrics(client, run_id, calibration, test)
    for f in sorted(eval_dir.iterdir()):
        if f.suffix in (".json", ".csv"):
            client.log_artifact(run_id, str(f), artifact_path="evaluation")
    client.log_artifacts(run_id, str(eval_dir / "figures"), artifact_path="evaluation")


@dataclasses.dataclass(frozen=True)
class BuiltPackage:
    """A training output's served package, built in a temporary folder: the pyfunc
    ``artifacts`` map, the images the model takes (size, channels, resize), and the digests that
    identify it (the model alone, and the model with the code that serves it; see
    siamese.registry.package)."""

    artifacts: dict[str, str]
    image: ImageSpec
    model_digest: str
    package_digest: str
    onnx: str  # what the package's ONNX export is (the run's siamese.onnx tag)


@contextlib.contextmanager
def built_package(
    model_dir: Path, calibration_path: Path, serve: ServeParams, onnx_sample=None
) -> Iterator[BuiltPackage]:
    """The served package of a training output, for the block. ``onnx_sample``: real images the
    ONNX export is checked on (``serve.export_onnx``; none: no export)."""
    calibration = read_json(calibration_path)
    image = ImageSpec.from_config(read_json(model_dir / CONFIG_FILE))
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "package"
        limit = serve.max_request_bytes
        artifacts = build_package(
            model_dir,
            calibration,
            serve.max_pixels,
            dest,
            max_request_bytes=limit,
            max_rows=serve.max_rows,
            chunk_images=serve.chunk_images,
            runtime=serve.runtime,
            onnx_sample=onnx_sample if serve.export_onnx else None,
        )
        yield BuiltPackage(
            artifacts, image, model_digest(dest), package_digest(dest), onnx_status(artifacts)
        )


def log_model(run_id: str, artifacts: dict[str, str], image: ImageSpec) -> str:
    """Log the pyfunc into the run as a model from code: safetensors weights, preprocessing and
    calibration JSON (a built package, see ``built_package``), the siamese package as code;
    returns its URI."""
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name="model", **pyfunc_kwargs(artifacts, image))
    return info.model_uri


def restore_model_files(client, name: str, mv, package: BuiltPackage) -> None:
    """Upload a version's model files again, into the logged model it was registered from, after
    the artifact store lost them. The caller has checked that ``package`` holds the version's
    model (same model digest); the MLmodel is written as ``mlflow.pyfunc.log_model`` writes it
    for that logged model, so the version number, aliases and tags stay as they were. The code
    shipped is the current one: the version's package digest is updated to match."""
    model_id = getattr(mv, "model_id", None)
    if not model_id and (mv.source or "").startswith("models:/m-"):
        model_id = mv.source.removeprefix("models:/")  # a search result may leave model_id out
    if not model_id:
        raise RegistryStateError(
            f"{name} v{mv.version} was not registered from a logged model ({mv.source}); its "
            "files cannot be uploaded again in place: register and promote a new version"
        )
    logged = client.get_logged_model(model_id)
    meta = Model(
        artifact_path=logged.artifact_location,
        model_uuid=logged.model_id,
        run_id=logged.source_run_id,
        model_id=logged.model_id,
    )
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model"
        mlflow.pyfunc.save_model(
            str(local), mlflow_model=meta, **pyfunc_kwargs(package.artifacts, package.image)
        )
        for pycache in local.rglob("__pycache__"):
            shutil.rmtree(pycache, ignore_errors=True)
        client.log_model_artifacts(model_id, str(local))
    version = str(mv.version)
    client.set_model_version_tag(name, version, PACKAGE_DIGEST_TAG, package.package_digest)
    client.set_model_version_tag(name, version, RESTORED_TAG, _now())
    log.warning(
        "uploaded the lost model files of %s v%s again into %s (%s)",
        name,
        version,
        logged.artifact_location,
        model_id,
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def recreate_run(
    client,
    params: Params,
    lost_run_id: str,
    prepared_dir: Path,
    pairs_dir: Path,
    prepared_md5: str,
    pairs_md5: str,
    summary: dict,
) -> str:
    """A FINISHED run standing in for a training run the tracking store lost: the params, data
    hashes and training summary of the exported training, tagged ``siamese.recreated_from`` with
    the lost run's id, so the exported model is registered without training it again."""
    name = runs.default_run_name(params, runs.params_md5(params))
    run_id = runs.start_run(
        params,
        prepared_dir,
        pairs_dir,
        prepared_md5,
        pairs_md5,
        f"{name} (re-created by register --force)",
    )
    client.set_tag(run_id, "stage", "register --force")
    client.set_tag(run_id, RECREATED_TAG, lost_run_id)
    runs.finish(run_id, summary)
    log.warning(
        "the training run %s is not in the tracking store; registering the exported model in a "
        "new run %s (tagged %s)",
        lost_run_id,
        run_id,
        RECREATED_TAG,
    )
    return run_id


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
