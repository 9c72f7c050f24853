"""Load what the registry holds: a model URI pinned to its version, the served pyfunc model, or
the bare encoder of a logged or registered model (for mining, one-shot runs and galleries).

Every load checks the package first (siamese.registry.integrity): each file against the
package's ``checksums.json`` and, for a registered version, the files' model digest against the
version's ``siamese.model_sha256`` tag recorded at registration. An altered package is refused
with a ``PackageIntegrityError`` naming the file (or the version) and both digests."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from siamese.errors import PackageIntegrityError, RegistryStateError
from siamese.models.encoders import SiameseEncoder
from siamese.models.loading import CONFIG_FILE, load_encoder
from siamese.registry.integrity import CHECKSUMS_FILE, verify_checksums
from siamese.registry.package import model_digest
from siamese.registry.tracking import active_tracking_uri, client, is_tracking_unreachable
from siamese.registry.tracking import tracking_uri as default_tracking_uri
from siamese.registry.versions import MODEL_DIGEST_TAG, files_missing_message, missing_files


def resolve_model_uri(uri: str, tracking_uri: str | None = None) -> str:
    """``models:/NAME@alias`` -> ``models:/NAME/VERSION``, so a gallery stays tied to the exact
    version that embedded it even after the alias moves."""
    if not uri.startswith("models:/") or "@" not in uri:
        return uri
    # the last "@" starts the alias, as MLflow's own parser reads it (a name may hold "@")
    name, alias = uri.removeprefix("models:/").rsplit("@", 1)
    version = client(tracking_uri).get_model_version_by_alias(name, alias).version
    return f"models:/{name}/{version}"


def missing_files_error(uri: str, tracking_uri: str | None = None) -> RegistryStateError | None:
    """Why ``models:/NAME@alias`` or ``models:/NAME/VERSION`` failed to load when the reason is
    a registered version whose model files are gone from the artifact store (naming the version
    and the repair); None for any other URI or reason. Called after a load failed, so a working
    load costs nothing extra."""
    uri = str(uri)
    if not uri.startswith("models:/"):
        return None
    ref = uri.removeprefix("models:/")
    tracking_uri = tracking_uri or default_tracking_uri()
    mlflow_client = client(tracking_uri)
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            mv = mlflow_client.get_model_version_by_alias(name, alias)
        else:
            name, version = ref.split("/", 1)
            mv = mlflow_client.get_model_version(name, version.strip("/"))
        missing = missing_files(mlflow_client, name, mv.version, tracking_uri)
    except MlflowException as err:
        if is_tracking_unreachable(err):
            raise
        return None  # no such model, alias or version: MLflow's own message says so
    if not missing:
        return None
    return RegistryStateError(files_missing_message(mlflow_client, name, mv, missing, tracking_uri))


def _registered_version(uri: str, tracking_uri: str):
    """The registered version a ``models:/NAME/VERSION`` or ``models:/NAME@alias`` URI names;
    None for any other URI."""
    if not uri.startswith("models:/"):
        return None
    ref = uri.removeprefix("models:/")
    mlflow_client = client(tracking_uri)
    if "@" in ref:
        name, alias = ref.rsplit("@", 1)
        return mlflow_client.get_model_version_by_alias(name, alias)
    name, version = ref.split("/", 1)
    return mlflow_client.get_model_version(name, version.strip("/"))


def verify_package(model_dir: str | Path, uri: str, tracking_uri: str) -> str:
    """Check a downloaded model (the folder holding ``MLmodel`` and ``artifacts/``) before it is
    loaded; its model digest (what ``siamese.model_sha256`` records). Raises a
    ``PackageIntegrityError`` naming the altered file, or the version whose digest differs."""
    artifacts = Path(model_dir) / "artifacts"
    if (artifacts / CHECKSUMS_FILE).is_file():
        verify_checksums(artifacts / CHECKSUMS_FILE, f"model {uri}")
    digest = model_digest(artifacts)
    mv = _registered_version(uri, tracking_uri)
    recorded = None if mv is None else (mv.tags or {}).get(MODEL_DIGEST_TAG)
    if recorded is not None and recorded != digest:
        raise PackageIntegrityError(
            f"model {mv.name} version {mv.version} ({uri}) was altered after registration: its "
            f"files in the artifact store give the model digest {digest}, recorded "
            f"{MODEL_DIGEST_TAG}={recorded} when it was registered. Refusing to load it; "
            "restore its files, or `siamese rollback` to the previous champion"
        )
    return digest


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names a logged or registered model rather than a local folder."""
    return "://" in str(uri) or str(uri).startswith(("models:", "runs:"))


def checked_package(uri: str, tracking_uri: str, dst: str | Path | None = None) -> tuple[Path, str]:
    """The folder of a model URI's package (downloaded into ``dst``, default a new temporary
    folder that is kept; a local folder as it is), checked by :func:`verify_package`, and its
    model digest. A registered version whose files are gone raises a ``RegistryStateError``
    naming the repair."""
    try:
        local = Path(uri)
        if is_remote(uri):
            dst = dst or tempfile.mkdtemp(prefix="siamese-model-")
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri
                )
            )
        return local, verify_package(local, uri, tracking_uri)
    except Exception as err:
        # a file gone from the store (an altered package too) is named with its repair
        problem = missing_files_error(uri, tracking_uri)
        if problem is None:
            raise
        raise problem from err


def load_pyfunc(uri: str, tracking_uri: str | None = None) -> tuple[mlflow.pyfunc.PyFuncModel, str]:
    """The pyfunc model of a model URI or folder, checked (:func:`verify_package`) before it is
    loaded, with its model digest. A registered version whose files are gone raises a
    ``RegistryStateError`` naming the repair."""
    tracking_uri = tracking_uri or default_tracking_uri()
    uri = str(uri)
    with active_tracking_uri(tracking_uri):
        # the download is kept (as mlflow.pyfunc.load_model keeps its own): the loaded model's
        # code paths stay importable
        local, digest = checked_package(uri, tracking_uri)
        try:
            return mlflow.pyfunc.load_model(str(local)), digest
        except Exception as err:
            problem = missing_files_error(uri, tracking_uri)
            if problem is None:
                raise
            raise problem from err


def load_served_model(uri: str, tracking_uri: str | None = None, runtime: str | None = None):
    """The served model object (siamese.registry.pyfunc.SiameseModel) of a model URI or folder,
    checked before it is loaded (see :func:`load_pyfunc`); ``runtime`` (torch | onnx) overrides
    the one its package serves with (``serve.runtime``)."""
    model = load_pyfunc(uri, tracking_uri)[0].unwrap_python_model()
    return model if runtime is None else model.use_runtime(runtime)


def load_registered_encoder(uri: str | Path, tracking_uri: str | None = None) -> SiameseEncoder:
    """The encoder of a logged or registered model: ``models:/NAME@alias``, ``models:/NAME/3``,
    ``runs:/RUN/model``, or a local folder (a training output with model.json, or a downloaded
    pyfunc model holding ``artifacts/encoder``). Remote URIs resolve against ``tracking_uri``
    (default: the project's, see :func:`siamese.registry.tracking.tracking_uri`)."""
    local = Path(str(uri))
    if "://" not in str(uri) and not str(uri).startswith(("models:", "runs:")):
        for candidate in (local, local / "artifacts" / "encoder"):
            if (candidate / CONFIG_FILE).is_file():
                return load_encoder(candidate)
        raise FileNotFoundError(f"{uri}: neither a model URI nor a folder holding model.json")
    tracking_uri = tracking_uri or default_tracking_uri()
    with tempfile.TemporaryDirectory() as tmp:
        local, _ = checked_package(str(uri), tracking_uri, tmp)
        return load_encoder(local / "artifacts" / "encoder")
