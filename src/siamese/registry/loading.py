"""Load what the registry holds: a model URI pinned to its version, the served pyfunc model, or
the bare encoder of a logged or registered model (for mining, one-shot runs and galleries)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow

from siamese.models.encoders import SiameseEncoder
from siamese.models.loading import CONFIG_FILE, load_encoder
from siamese.registry.tracking import active_tracking_uri, client
from siamese.registry.tracking import tracking_uri as default_tracking_uri


def resolve_model_uri(uri: str, tracking_uri: str | None = None) -> str:
    """``models:/NAME@alias`` -> ``models:/NAME/VERSION``, so a gallery stays tied to the exact
    version that embedded it even after the alias moves."""
    if not uri.startswith("models:/") or "@" not in uri:
        return uri
    # the last "@" starts the alias, as MLflow's own parser reads it (a name may hold "@")
    name, alias = uri.removeprefix("models:/").rsplit("@", 1)
    version = client(tracking_uri).get_model_version_by_alias(name, alias).version
    return f"models:/{name}/{version}"


def load_served_model(uri: str, tracking_uri: str | None = None):
    """The served model object (siamese.registry.pyfunc.SiameseModel) of a model URI or folder."""
    with active_tracking_uri(tracking_uri or default_tracking_uri()):
        return mlflow.pyfunc.load_model(str(uri)).unwrap_python_model()


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
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=str(uri), dst_path=tmp, tracking_uri=tracking_uri or default_tracking_uri()
        )
        return load_encoder(Path(path) / "artifacts" / "encoder")
