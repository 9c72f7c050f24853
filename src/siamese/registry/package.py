"""The served model's package: the plain-data artifacts (safetensors weights, the ONNX export,
preprocessing and calibration JSON), the signature and input example, and the arguments that log
or save it as an MLflow "model from code" (``serving_model.py`` plus the siamese package as
code)."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from siamese.data.images import ImageSpec, as_spec, encode_png
from siamese.errors import OnnxExportError, OnnxParityError
from siamese.io import read_json, write_json
from siamese.models import onnx
from siamese.models.encoders import external
from siamese.models.loading import CONFIG_FILE, load_encoder, load_state_dict, save_safetensors
from siamese.registry.integrity import CHECKSUMS_FILE, write_checksums
from siamese.registry.pyfunc import EMBED_COLUMN, NORMALIZATION

log = logging.getLogger(__name__)
MODEL_CODE = Path(__file__).with_name("serving_model.py")
ONNX_DIR = "onnx"  # the package's ONNX export (siamese.models.onnx), beside encoder/
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/siamese: shipped as the model's code


def preprocessing_spec(
    image: ImageSpec | int,
    max_pixels: int | None,
    max_request_bytes: int | None = None,
    *,
    max_rows: int | None = None,
    chunk_images: int | None = None,
    runtime: str = "torch",
) -> dict:
    """``preprocessing.json``: how an input becomes the encoder's input, and the serving limits
    the package carries (serve.* of params.yaml when it was registered). ``image_size``,
    ``channels`` and ``resize`` are what the model was trained on; serving decodes with them."""
    if runtime not in onnx.RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; allowed: {', '.join(onnx.RUNTIMES)}")
    image = as_spec(image)
    gray = "grayscale: PIL mode L (ITU-R 601-2 luma)"
    rgb = "RGB: PIL mode RGB, grayscale expanded to 3 equal channels"
    return {
        "image_size": image.size,
        "channels": image.channels,
        "resize": image.resize,
        "input": "encoded image bytes (PNG, JPEG, WebP, PGM, BMP, TIFF, GIF, ...: any raster "
        "format Pillow decodes), base64 strings, or arrays (H, W) / (H, W, 3|4), uint8 or float "
        "in [0, 1]",
        "orientation": "encoded images turned upright by their EXIF orientation first",
        "color": f"{gray if image.channels == 1 else rgb}, alpha composited on white, "
        "16-bit scaled by its maximum",
        "resize_method": {
            "stretch": "bilinear to image_size (height x width), aspect ratio not kept",
            "pad": "bilinear to fit image_size keeping the aspect ratio, centred, letterboxed "
            "with the median of the image's border pixels",
            "crop": "bilinear so the short side fits image_size keeping the aspect ratio, "
            "centre-cropped",
        }[image.resize],
        "dtype": "uint8",
        "layout": "height x width x channels, fed to the encoder as channels x height x width",
        "normalization": dict(NORMALIZATION),
        "max_pixels": None if max_pixels is None else int(max_pixels),
        # HTTP request bodies (mlflow models serve) over this many bytes are answered with 413
        "max_request_bytes": None if max_request_bytes is None else int(max_request_bytes),
        # HTTP requests of more rows are answered with 413 before any image is decoded
        "max_rows": None if max_rows is None else int(max_rows),
        # images decoded and embedded at a time (bounds a request's working memory)
        "chunk_images": None if chunk_images is None else int(chunk_images),
        # what runs the encoder when served: torch, or onnx (onnxruntime on onnx/encoder.onnx)
        "runtime": runtime,
    }


def calibration_spec(calibration: dict) -> dict:
    keys = ("strategy", "target", "threshold", "threshold_ci", "probability")
    return {k: calibration.get(k) for k in keys}


def build_package(
    model_dir: str | Path,
    calibration: dict,
    max_pixels: int | None,
    dest: str | Path,
    *,
    max_request_bytes: int | None = None,
    max_rows: int | None = None,
    chunk_images: int | None = None,
    runtime: str = "torch",
    onnx_sample: np.ndarray | None = None,
) -> dict[str, str]:
    """Write the package's artifacts under ``dest``; returns the pyfunc ``artifacts`` map.

    With ``onnx_sample`` (real uint8 images at the model's size) the encoder is also exported to
    ONNX and checked on them (:func:`package_onnx`); ``runtime="onnx"`` requires that export."""

    model_dir, dest = Path(model_dir), Path(dest)
    enc = dest / "encoder"
    enc.mkdir(parents=True, exist_ok=True)
    config = read_json(model_dir / CONFIG_FILE)
    save_safetensors(load_state_dict(model_dir), enc / "model.safetensors")
    write_json(enc / CONFIG_FILE, config)
    if runtime == "onnx" and onnx_sample is None:
        raise OnnxExportError(
            "serve.runtime: onnx needs the package's ONNX export, and it is made only with real "
            "images to check it on (serve.export_onnx: true)"
        )
    artifacts = {
        "encoder": str(enc),
        "preprocessing": str(dest / "preprocessing.json"),
        "calibration": str(dest / "calibration.json"),
        "checksums": str(dest / CHECKSUMS_FILE),
    }
    if onnx_sample is not None:
        package_onnx(enc, dest / ONNX_DIR, onnx_sample, required=runtime == "onnx")
        artifacts["onnx"] = str(dest / ONNX_DIR)
    write_json(
        dest / "preprocessing.json",
        preprocessing_spec(
            ImageSpec.from_config(config),
            max_pixels,
            max_request_bytes,
            max_rows=max_rows,
            chunk_images=chunk_images,
            runtime=runtime,
        ),
    )
    write_json(dest / "calibration.json", calibration_spec(calibration))
    # the SHA-256 of each file above: the served model refuses a package that differs
    write_checksums(dest)
    return artifacts


def package_onnx(encoder_dir: Path, dest: Path, sample: np.ndarray, required: bool) -> dict:
    """Export the package's encoder to ONNX in ``dest`` and check it on ``sample``; its
    ``onnx.json``. An encoder that cannot be exported (an operator ONNX lacks, in a python:
    module) gets an ``onnx.json`` saying why instead, unless ``required``; an export that does
    not match PyTorch always fails (``OnnxParityError``): a package never carries a wrong one."""
    try:
        return onnx.export_onnx(load_encoder(encoder_dir), dest, sample)
    except OnnxParityError:
        raise
    except OnnxExportError as err:
        if required:
            raise OnnxExportError(
                f"serve.runtime: onnx, but {err}; serve it with serve.runtime: torch"
            ) from err
        log.warning("registered without ONNX: %s", err)
        return onnx.write_not_exported(dest, str(err))


def onnx_status(artifacts: dict[str, str]) -> str:
    """One line for the run's ``siamese.onnx`` tag: what the package's ONNX export is."""
    info = onnx.read_info(artifacts.get("onnx"))
    if info is None:
        return "not exported (serve.export_onnx: false)"
    if not info["exported"]:
        return f"not exported: {info['reason']}"[:4000]
    parity = info["parity"]
    return (
        f"exported (opset {info['opset']}; parity on {parity['images']} images: max abs "
        f"embedding diff {parity['max_abs_embedding_diff']:.2g}, distance diff "
        f"{parity['max_abs_distance_diff']:.2g})"
    )


def model_digest(dest: str | Path) -> str:
    """SHA-256 of a built package's files (every path and its bytes under ``dest``): the weights,
    architecture, preprocessing and calibration of the model. build_package writes them
    deterministically, so one model has one digest on every machine. (``checksums.json`` is
    derived from the others and left out, so versions registered before it existed keep their
    digest.)"""
    return _tree_digest(Path(dest), "*").hexdigest()


def package_digest(dest: str | Path, code_dir: str | Path = PACKAGE_DIR) -> str:
    """SHA-256 of everything a version serves: the model (``model_digest``), the Python code
    shipped with it (``code_dir``'s ``.py`` files, and a python: encoder's module) and the
    pinned requirements. Two versions with one package digest answer every request identically;
    a code change gives another digest."""
    dest = Path(dest)
    config = read_json(dest / "encoder" / CONFIG_FILE)
    h = _tree_digest(dest, "*")
    h.update(_tree_digest(Path(code_dir), "*.py").digest())
    for extra in encoder_code_paths(config):
        if extra.is_dir():
            h.update(_tree_digest(extra, "*.py").digest())
        else:
            h.update(f"{extra.name}\0".encode() + hashlib.sha256(extra.read_bytes()).digest())
    h.update("\n".join(pip_requirements(config, onnx.exported(dest / ONNX_DIR))).encode())
    return h.hexdigest()


def encoder_code_paths(config: dict) -> list[Path]:
    """The code a model's encoder needs besides the siamese package: a python: encoder's module
    (its file, or its top-level package's folder). Registration fails with a ParamsError when
    that module cannot travel as code."""
    return external.code_paths(config["encoder"])


def _tree_digest(root: Path, pattern: str):
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob(pattern) if p.is_file()):
        if "__pycache__" in f.parts or f.name == CHECKSUMS_FILE:
            continue
        h.update(f"{f.relative_to(root).as_posix()}\0".encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h


def signature():
    return ModelSignature(
        inputs=Schema(
            [
                ColSpec("binary", "image_a", required=False),
                ColSpec("binary", "image_b", required=False),
                ColSpec("binary", EMBED_COLUMN, required=False),
            ]
        ),
        # mode "pair"; mode "embed" answers one column, embedding (a list of floats per row)
        outputs=Schema(
            [
                ColSpec("double", "distance"),
                ColSpec("double", "similarity"),
                ColSpec("double", "probability"),
                ColSpec("boolean", "match"),
            ]
        ),
        params=ParamSchema([ParamSpec("mode", "string", "pair")]),
    )


def example_frame(image: ImageSpec | int) -> pd.DataFrame:
    """A one-pair input example (two synthetic gradients at the model's size and colour)."""
    image = as_spec(image)
    rows = np.linspace(0, 255, image.height, dtype=np.float64)
    cols = np.linspace(0, 255, image.width, dtype=np.float64)
    a = np.add.outer(rows, cols) / 2
    b = a[::-1, ::-1]
    if image.channels == 3:  # a colour model's example is in colour
        a = np.stack([a, a[::-1], np.full_like(a, 128.0)], axis=-1)
        b = np.stack([b, np.full_like(b, 64.0), b[:, ::-1]], axis=-1)
    return pd.DataFrame(
        {
            "image_a": [encode_png(a.astype(np.uint8))],
            "image_b": [encode_png(b.astype(np.uint8))],
        }
    )


def pip_requirements(config: dict | None = None, with_onnx: bool = False) -> list[str]:
    """The served model's pinned requirements; with a model's ``config``, also what its encoder
    needs (timm for a timm: encoder); ``with_onnx``: onnxruntime, for a package with an ONNX
    export (``serve.runtime: onnx`` or ``--runtime onnx`` runs it)."""
    out = []
    names = ("mlflow", "torch", "numpy", "pandas", "pillow", "safetensors")
    for name in names + (("onnxruntime",) if with_onnx else ()):
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            out.append(name)
    return out + (external.requirements(config["encoder"]) if config else [])


def pyfunc_kwargs(artifacts: dict[str, str], image: ImageSpec) -> dict:
    """Arguments of ``mlflow.pyfunc.log_model`` / ``save_model`` for a built package: the
    siamese package as code, plus a python: encoder's module; timm for a timm: encoder."""
    config = read_json(Path(artifacts["encoder"]) / CONFIG_FILE)
    code = [str(PACKAGE_DIR)] + [str(p) for p in encoder_code_paths(config)]
    return {
        "python_model": str(MODEL_CODE),
        "artifacts": artifacts,
        "code_paths": code,
        "signature": signature(),
        "input_example": example_frame(image),
        "pip_requirements": pip_requirements(config, onnx.exported(artifacts.get("onnx"))),
    }


def save_package(
    path: str | Path,
    model_dir: str | Path,
    calibration: dict,
    max_pixels: int | None,
    *,
    max_request_bytes: int | None = None,
    max_rows: int | None = None,
    chunk_images: int | None = None,
    runtime: str = "torch",
    onnx_sample: np.ndarray | None = None,
) -> Path:
    """Save the pyfunc model to a local folder (``mlflow models serve -m PATH`` serves it); with
    ``onnx_sample`` (real images), with the ONNX export checked on them."""

    image = ImageSpec.from_config(read_json(Path(model_dir) / CONFIG_FILE))
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = build_package(
            model_dir,
            calibration,
            max_pixels,
            tmp,
            max_request_bytes=max_request_bytes,
            max_rows=max_rows,
            chunk_images=chunk_images,
            runtime=runtime,
            onnx_sample=onnx_sample,
        )
        mlflow.pyfunc.save_model(str(path), **pyfunc_kwargs(artifacts, image))
    return Path(path)
