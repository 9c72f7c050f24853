"""``siamese export``: a registered model as plain files for use outside MLflow and PyTorch.

The ONNX export is the one registration made and checked (the package's ``onnx/``), copied out
after the package passed its integrity checks, with the preprocessing and calibration specs it
was registered with and ``score_pair.py`` (``onnx_scoring.py``), which scores pairs with
onnxruntime alone. The folder is written atomically: a failed export leaves nothing behind."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from siamese.errors import RegistryStateError
from siamese.io import atomic_dir, read_json, write_json
from siamese.models.onnx import DISTANCE_FILE, ENCODER_FILE, INFO_FILE, exported, read_info
from siamese.registry.integrity import file_sha256
from siamese.registry.loading import checked_package, is_remote, resolve_model_uri
from siamese.registry.package import ONNX_DIR
from siamese.registry.tracking import tracking_uri as default_tracking_uri

EXPORT_FORMATS = ("onnx",)  # --format: the choices
SCRIPT = Path(__file__).with_name("onnx_scoring.py")
SCRIPT_NAME = "score_pair.py"
EXPORT_FILE = "export.json"  # where the folder came from, and each file's SHA-256


def export_model(
    uri: str, out: str | Path, fmt: str = "onnx", tracking_uri: str | None = None
) -> dict:
    """Write the model ``uri`` (``models:/NAME@alias``, ``models:/NAME/VERSION``, ``runs:/...``
    or a saved package folder) to ``out`` in ``fmt``; returns ``export.json``'s contents. A
    version without an ONNX export (registered with ``serve.export_onnx: false``, or an encoder
    ONNX cannot express) is refused, naming why."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; allowed: {', '.join(EXPORT_FORMATS)}")
    tracking_uri = tracking_uri or default_tracking_uri()
    resolved = resolve_model_uri(str(uri), tracking_uri) if is_remote(uri) else str(uri)
    with tempfile.TemporaryDirectory(prefix="siamese-export-") as tmp:
        # downloaded and checked: an altered package is refused
        local, digest = checked_package(resolved, tracking_uri, tmp)
        arts = local / "artifacts"
        onnx_dir = arts / ONNX_DIR
        if not exported(onnx_dir):
            info = read_info(onnx_dir)
            why = (
                "it was registered with serve.export_onnx: false; register it again with "
                "serve.export_onnx: true"
                if info is None
                else f"its encoder could not be exported: {info.get('reason')}"
            )
            raise RegistryStateError(f"{resolved} has no ONNX export: {why}")
        with atomic_dir(out) as dest:
            for name in (ENCODER_FILE, DISTANCE_FILE, INFO_FILE):
                shutil.copyfile(onnx_dir / name, dest / name)
            for name in ("preprocessing.json", "calibration.json"):
                shutil.copyfile(arts / name, dest / name)
            shutil.copyfile(SCRIPT, dest / SCRIPT_NAME)
            files = sorted(p.name for p in dest.iterdir())
            summary = {
                "model": resolved,
                "format": fmt,
                "model_sha256": digest,
                "onnx": read_json(dest / INFO_FILE),
                "score": f"python {SCRIPT_NAME} . IMAGE_A IMAGE_B",
                "files": {name: file_sha256(dest / name) for name in files},
            }
            write_json(dest / EXPORT_FILE, summary)
    return summary
