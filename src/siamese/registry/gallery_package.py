"""A gallery served with its model: ``siamese register-gallery`` registers a gallery as a model
of its own, ``<model name>-gallery``, so that ``mlflow models serve -m
models:/<model name>-gallery@champion`` answers ``params: {"mode": "identify"}`` and
``{"mode": "anomaly"}`` requests (and ``pair`` / ``embed``, as the model does).

Each version is the package of the model version that embedded the gallery (its encoder, ONNX
export, preprocessing, calibration and checksums, copied unchanged) plus two artifacts:

* ``gallery``: the gallery folder (gallery.json, embeddings, index, thresholds);
* ``gallery_images``: the images it holds, ``<identity>/<file>``, so that it can be embedded
  again by another model.

It is logged on the run of the model version it was embedded with, and tagged with that version
(``gallery.model_version``) and the weights' fingerprint (``gallery.encoder_sha256``). The served
model refuses a gallery whose recorded fingerprint differs from the weights it serves
(:func:`open_served_gallery`): a gallery embedded by another version is never used silently.
When ``siamese promote`` moves ``champion`` of the model, :func:`reembed_for_champion` embeds the
champion gallery's images with the new champion, calibrates it again and registers it as the
gallery's new ``champion``."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from siamese.config import IdentifyParams
from siamese.errors import GalleryError
from siamese.io import read_json
from siamese.registry.gallery import build_gallery, encoder_fingerprint, read_gallery
from siamese.registry.identify import (
    DECISIONS,
    calibration_hook,
)

log = logging.getLogger(__name__)

GALLERY_ARTIFACT, IMAGES_ARTIFACT = "gallery", "gallery_images"
MODEL_VERSION_TAG, ENCODER_TAG = "gallery.model_version", "gallery.encoder_sha256"
CHAMPION = "champion"


def gallery_model_name(model_name: str) -> str:
    """The registered model a model's galleries are versions of."""
    return f"{model_name}-gallery"


# ------------------------------------------------------------------------------------- serving


class ServedGallery:
    """The gallery a served package holds: identify / anomaly answers for embedded rows."""

    def __init__(self, path: Path, meta: dict):
        self.path, self.meta = path, meta

    def answer(self, emb: np.ndarray, mode: str, encoder) -> pd.DataFrame:
        """One row per embedded image: what ``siamese identify`` / ``anomaly`` answer for it
        (a gallery without that threshold: HTTP 400 naming how to calibrate it)."""
        from siamese.registry.pyfunc import invalid_input

        try:
            return pd.DataFrame(DECISIONS[mode](self.path, self.meta, emb, encoder))
        except GalleryError as err:
            raise invalid_input(str(err)) from None


def open_served_gallery(path: str | Path, model) -> ServedGallery:
    """The package's gallery, refused (GalleryError, a ValueError: the model does not load)
    when it was embedded by other weights than the package's own."""
    path = Path(path)
    meta = read_gallery(path)
    served = encoder_fingerprint(model.encoder)
    if meta.get("encoder_sha256") != served:
        raise GalleryError(
            f"the package's gallery was embedded by {meta.get('model')} (weights "
            f"{str(meta.get('encoder_sha256'))[:12]}), not by the weights this package serves "
            f"({served[:12]}): refusing to answer identify / anomaly with it; embed it again "
            "(siamese index, then siamese register-gallery)"
        )
    return ServedGallery(path, meta)


# --------------------------------------------------------------------------------- registering


def _model_version(meta: dict) -> tuple[str, str]:
    uri = str(meta.get("model", ""))
    parts = uri.removeprefix("models:/").split("/")
    if not uri.startswith("models:/") or len(parts) != 2 or not parts[1].isdigit():
        raise GalleryError(
            f"the gallery was embedded by {uri or 'an unknown model'}, not a registered model "
            "version (models:/NAME/VERSION): build it with a registered model to register it"
        )
    return parts[0], parts[1]


def _copy_images(meta: dict, dest: Path) -> None:
    files = meta.get("files") or []
    if len(files) != meta["count"] or any(f is None for f in files):
        raise GalleryError(
            "the gallery does not record the image file of every entry (built from a zip, or "
            "before files were recorded): rebuild it from a folder with siamese index"
        )
    for i, (ident, f) in enumerate(zip(meta["identities"], files, strict=True)):
        src = Path(f)
        if not src.is_file():
            raise GalleryError(
                f"image {src} of gallery entry {i} ({ident}) is gone: it is needed to embed "
                "the gallery again on promotion"
            )
        folder = dest / ident
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, folder / f"{i:07d}-{src.name}")


def register_gallery(path: str | Path, tracking_uri: str | None = None) -> dict:
    """Register the gallery folder ``path`` as a version of ``<model name>-gallery`` (module
    doc); it takes the ``champion`` alias when its model version is the model's champion."""
    from siamese.data.images import ImageSpec
    from siamese.registry import tracking
    from siamese.registry.package import pyfunc_kwargs
    from siamese.registry.registration import ensure_registered_model
    from siamese.registry.tracking import active_tracking_uri
    from siamese.registry.tracking import tracking_uri as default_uri

    path = Path(path)
    meta = read_gallery(path)
    name, version = _model_version(meta)
    uri = tracking_uri or default_uri()
    client = tracking.client(uri)
    mv = client.get_model_version(name, version)
    with tempfile.TemporaryDirectory(prefix="siamese-gallery-package.") as tmp:
        tmp = Path(tmp)
        package = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}",
                dst_path=str(tmp / "model"),
                tracking_uri=uri,
            )  # fmt: skip
        )
        arts = package / "artifacts"
        artifacts = {
            "encoder": str(arts / "encoder"),
            "preprocessing": str(arts / "preprocessing.json"),
            "calibration": str(arts / "calibration.json"),
            GALLERY_ARTIFACT: str(path),
        }
        if (arts / "checksums.json").is_file():
            artifacts["checksums"] = str(arts / "checksums.json")
        if (arts / "onnx").is_dir():  # the ONNX export, for a serve.runtime: onnx package
            artifacts["onnx"] = str(arts / "onnx")
        _copy_images(meta, tmp / IMAGES_ARTIFACT)
        artifacts[IMAGES_ARTIFACT] = str(tmp / IMAGES_ARTIFACT)
        image = ImageSpec.from_config(read_json(arts / "encoder" / "model.json"))
        gallery_name = gallery_model_name(name)
        ensure_registered_model(client, gallery_name)
        with active_tracking_uri(uri), mlflow.start_run(run_id=mv.run_id):
            info = mlflow.pyfunc.log_model(name="gallery", **pyfunc_kwargs(artifacts, image))
        gv = client.create_model_version(
            gallery_name,
            info.model_uri,
            run_id=mv.run_id,
            tags={MODEL_VERSION_TAG: version, ENCODER_TAG: meta["encoder_sha256"]},
            description=f"gallery of {len(set(meta['identities']))} identities "
            f"({meta['count']} images) embedded by models:/{name}/{version}",
        )
    champion = _alias_version(client, name, CHAMPION)
    aliases = []
    if champion == version:
        client.set_registered_model_alias(gallery_name, CHAMPION, str(gv.version))
        aliases.append(CHAMPION)
    return {
        "gallery_model": gallery_name,
        "version": str(gv.version),
        "model_version": version,
        "aliases": aliases,
        "identities": len(set(meta["identities"])),
        "count": meta["count"],
    }


def _alias_version(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def reembed_for_champion(
    client,
    name: str,
    version: str,
    prepared: Path,
    params: IdentifyParams,
    seed: int,
    tracking_uri: str,
) -> dict | None:
    """After ``champion`` of ``name`` moved to ``version``: the gallery's champion (or, without
    one, its latest version) embedded again with ``version``, its thresholds calibrated again
    on the val split of ``prepared`` (the new weights have their own distances), registered as
    the gallery's champion. None when the model has no registered gallery, or its champion
    gallery already is ``version``'s."""
    from mlflow.exceptions import MlflowException

    gallery_name = gallery_model_name(name)
    try:
        versions = client.search_model_versions(f"name='{gallery_name}'")
    except MlflowException:
        return None
    if not versions:
        return None
    current = _alias_version(client, gallery_name, CHAMPION)
    source = next((v for v in versions if str(v.version) == current), None)
    source = source or max(versions, key=lambda v: int(v.version))
    if (source.tags or {}).get(MODEL_VERSION_TAG) == str(version):
        return None
    with tempfile.TemporaryDirectory(prefix="siamese-reembed.") as tmp:
        tmp = Path(tmp)
        package = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{gallery_name}/{source.version}",
                dst_path=str(tmp / "package"),
                tracking_uri=tracking_uri,
            )  # fmt: skip
        )
        images = package / "artifacts" / IMAGES_ARTIFACT
        calibrate = calibration_hook(params, seed, None, prepared) if prepared.is_dir() else None
        build_gallery(images, f"models:/{name}/{version}", tmp / "gallery", tracking_uri,
                      calibrate=calibrate)  # fmt: skip
        result = register_gallery(tmp / "gallery", tracking_uri)
    result["reembedded_from"] = str(source.version)
    log.info("gallery %s v%s embedded again with %s v%s: v%s", gallery_name, source.version,
             name, version, result["version"])  # fmt: skip
    return result
