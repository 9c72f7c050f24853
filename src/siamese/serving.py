"""The MLflow pyfunc model: what production serves. It takes image pairs and returns the distance,
a similarity score, the calibrated probability and the match decision at the calibrated threshold,
using exactly the encoder, preprocessing and threshold that were evaluated; or, with the param
``mode="embed"``, the embedding of single images.

The package is a "model from code" (``serving_model.py`` plus this package as code), never a
pickled object. Its artifacts are plain data:

* ``encoder/``: ``model.json`` (architecture config) and ``model.safetensors`` (the state dict);
* ``preprocessing.json``: image size, colour conversion, resampling, normalisation, pixel limit,
  request size limit;
* ``calibration.json``: threshold strategy, threshold, distance -> probability map.

Bad input (not an image, a decompression bomb, too many pixels, wrong columns or mode) raises an
``MlflowException`` with ``INVALID_PARAMETER_VALUE``, which ``mlflow models serve`` answers with
HTTP 400 and the message. Inside ``mlflow models serve`` the model also guards the scoring
server's request handling (see :func:`guard_scoring_server`): a request without a Content-Type
gets 415, a body over ``max_request_bytes`` 413, and error messages are cut to a bounded size."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

INPUT_COLUMNS = ("image_a", "image_b")
EMBED_COLUMN = "image"
MODES = ("pair", "embed")
MODEL_CODE = Path(__file__).with_name("serving_model.py")
# what siamese.models.encoders.preprocess does; stored in the package and checked on load
NORMALIZATION = {"divide": 127.5, "subtract": 1.0}


def invalid_input(message: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _decode(value: Any, size: int, name: str, max_pixels: int | None) -> np.ndarray:
    from siamese.data.images import BadImageError, array_image, decode_image

    if isinstance(value, np.ndarray) and value.dtype != object:
        return array_image(value, size, name=name, max_pixels=max_pixels)
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadImageError(f"{name}: string input is not valid base64") from None
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        raise BadImageError(f"{name}: missing image")
    if not isinstance(value, bytes):
        raise BadImageError(
            f"{name}: expected an encoded image (bytes or base64 string) or an array, "
            f"got {type(value).__name__}"
        )
    return decode_image(value, size, name=name, max_pixels=max_pixels)


THREADS_ENV = "SIAMESE_SERVE_THREADS"


def _set_serving_threads() -> None:
    """Inside ``mlflow models serve`` inference runs single-threaded unless SIAMESE_SERVE_THREADS
    says otherwise: one pair is too small to gain from intra-op threads, and on a shared CPU
    oversubscribed threads cost far more (scale out with ``--workers`` instead). In any other
    process torch's setting is left alone unless the variable is set."""
    import os

    from mlflow.pyfunc.scoring_server import _SERVER_MODEL_PATH

    threads = os.environ.get(THREADS_ENV)
    if threads is None and _SERVER_MODEL_PATH in os.environ:
        threads = "1"
    if threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))


MAX_ERROR_CHARS = 4000  # longer error messages are cut in the middle (head and tail kept)


def _shorten(message: str, limit: int = MAX_ERROR_CHARS) -> str:
    if len(message) <= limit:
        return message
    keep = (limit - 60) // 2
    cut = len(message) - 2 * keep
    return f"{message[:keep]} ... [{cut} characters cut] ... {message[-keep:]}"


def guard_scoring_server(max_request_bytes: int | None) -> bool:
    """Inside ``mlflow models serve`` (and only there), wrap the scoring server's request
    handler ``mlflow.pyfunc.scoring_server.invocations`` so that bad requests are answered as
    such instead of costing memory or a 500:

    * no Content-Type header: 415 with a JSON message (MLflow itself fails with 500);
    * a body over ``max_request_bytes``: 413 with a JSON message, before it is parsed (parsing,
      base64 decoding and MLflow's error messages take several times the body's size);
    * error messages over ``MAX_ERROR_CHARS`` characters are cut in the middle (MLflow echoes a
      body that is not valid JSON in full, ~10 bytes per byte of a non-UTF-8 body).

    The handler is looked up by name on each request, so the wrapper takes effect for every
    request after the model is loaded; loading again replaces the limit. Returns whether the
    guard is installed."""
    import functools
    import os

    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    original = getattr(scoring_server, "invocations", None)
    needed = ("InvocationsResponse", "CONTENT_TYPES", "_SERVER_MODEL_PATH")
    if original is None or not all(hasattr(scoring_server, n) for n in needed):
        return False  # another MLflow scoring server: left as it is
    if scoring_server._SERVER_MODEL_PATH not in os.environ:
        return False
    original = getattr(original, "siamese_original", original)

    def refuse(status: int, message: str):
        body = json.dumps({"error_code": "BAD_REQUEST", "message": message})
        return scoring_server.InvocationsResponse(body, status, "application/json")

    @functools.wraps(original)
    def invocations(data, content_type, *args, **kwargs):
        if not (content_type or "").strip():
            return refuse(
                415,
                "the request has no Content-Type header; send 'Content-Type: application/json' "
                f"(accepted: {', '.join(scoring_server.CONTENT_TYPES)})",
            )
        if max_request_bytes is not None and len(data) > max_request_bytes:
            return refuse(
                413,
                f"the request body is {len(data)} bytes, over the limit of {max_request_bytes} "
                "bytes (serve.max_request_bytes)",
            )
        try:
            return original(data, content_type, *args, **kwargs)
        except MlflowException as err:
            err.message = _shorten(str(err.message))
            raise

    invocations.siamese_original = original
    scoring_server.invocations = invocations
    return True


class SiameseModel(mlflow.pyfunc.PythonModel):
    """The served model. ``load_context`` reads the package's artifacts (weights-only)."""

    def load_context(self, context) -> None:
        from siamese.embedding import load_encoder
        from siamese.io import read_json

        arts = context.artifacts
        if "model_dir" in arts:  # packages logged before the weights-only format
            encoder = load_encoder(arts["model_dir"])
            preprocessing = preprocessing_spec(encoder.config["image_size"], None)
        else:
            encoder = load_encoder(arts["encoder"])
            preprocessing = read_json(arts["preprocessing"])
        self.setup(encoder, preprocessing, read_json(arts["calibration"]))
        _set_serving_threads()
        guard_scoring_server(self.max_request_bytes)

    def setup(self, encoder, preprocessing: dict, calibration: dict) -> SiameseModel:
        if preprocessing.get("normalization") != NORMALIZATION:
            raise ValueError(
                f"unsupported normalisation {preprocessing.get('normalization')}; this code "
                f"applies {NORMALIZATION}"
            )
        if preprocessing["image_size"] != encoder.config["image_size"]:
            raise ValueError("preprocessing.image_size differs from the encoder's image size")
        self.encoder = encoder
        self.preprocessing = preprocessing
        self.calibration = calibration
        self.threshold = float(calibration["threshold"])
        self.probability_map = calibration.get("probability") or {"method": "none"}
        self.image_size = int(preprocessing["image_size"])
        self.max_pixels = preprocessing.get("max_pixels")
        self.max_request_bytes = preprocessing.get("max_request_bytes")
        return self

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from siamese.data.images import BadImageError

        mode = (params or {}).get("mode", "pair")
        if mode not in MODES:
            raise invalid_input(f"unknown mode {mode!r}; allowed: {', '.join(MODES)}")
        if isinstance(model_input, dict):
            model_input = pd.DataFrame(model_input)
        if not isinstance(model_input, pd.DataFrame):
            raise invalid_input(
                f"expected a table with columns {self._columns(mode)}, "
                f"got {type(model_input).__name__}"
            )
        missing = [c for c in self._columns(mode) if c not in model_input.columns]
        if missing:
            raise invalid_input(
                f"input is missing column(s) {missing}; mode {mode!r} expects "
                f"{self._columns(mode)} (got {[str(c) for c in model_input.columns]})"
            )
        try:
            if mode == "embed":
                return self._embed(model_input)
            return self._pairs(model_input)
        except BadImageError as err:
            raise invalid_input(str(err)) from None

    @staticmethod
    def _columns(mode: str) -> list[str]:
        return [EMBED_COLUMN] if mode == "embed" else list(INPUT_COLUMNS)

    def _images(self, frame: pd.DataFrame, columns) -> np.ndarray:
        imgs = [
            _decode(v, self.image_size, f"row {i} {col}", self.max_pixels)
            for col in columns
            for i, v in enumerate(frame[col].tolist())
        ]
        if not imgs:
            return np.zeros((0, self.image_size, self.image_size), np.uint8)
        return np.stack(imgs)

    def embeddings(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S) uint8 -> float64 (N, D) embeddings, exactly as evaluated."""
        from siamese.embedding import embed

        return embed(self.encoder, images).astype(np.float64)

    def _embed(self, frame: pd.DataFrame) -> pd.DataFrame:
        emb = self.embeddings(self._images(frame, [EMBED_COLUMN]))
        return pd.DataFrame({"embedding": [row.tolist() for row in emb]})

    def _pairs(self, frame: pd.DataFrame) -> pd.DataFrame:
        n = len(frame)
        return self.score(self.embeddings(self._images(frame, INPUT_COLUMNS)), n)

    def score(self, emb: np.ndarray, n: int) -> pd.DataFrame:
        """Pair outputs from the stacked embeddings of n ``image_a`` then n ``image_b``."""
        from siamese.embedding import embedding_distances
        from siamese.probability import apply_probability_map

        d = embedding_distances(self.encoder, emb[:n], emb[n:]) if n else np.zeros(0)
        prob = apply_probability_map(self.probability_map, d)
        return pd.DataFrame(
            {
                "distance": d,
                "similarity": 1.0 / (1.0 + d),
                "probability": np.full(n, np.nan) if prob is None else prob,
                "match": d <= self.threshold,
            }
        )


SiamesePyfunc = SiameseModel  # the class name of packages logged as pickles (still loadable)


def preprocessing_spec(
    image_size: int, max_pixels: int | None, max_request_bytes: int | None = None
) -> dict:
    return {
        "image_size": int(image_size),
        "input": "encoded image bytes (PNG, JPEG, PGM, BMP, TIFF, GIF), base64 strings, or "
        "arrays (H, W) / (H, W, 3|4), uint8 or float in [0, 1]",
        "color": "grayscale: PIL mode L (ITU-R 601-2 luma), alpha composited on white, "
        "16-bit scaled by its maximum",
        "resize": "bilinear to image_size x image_size",
        "dtype": "uint8",
        "normalization": dict(NORMALIZATION),
        "max_pixels": None if max_pixels is None else int(max_pixels),
        # HTTP request bodies (mlflow models serve) over this many bytes are answered with 413
        "max_request_bytes": None if max_request_bytes is None else int(max_request_bytes),
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
) -> dict[str, str]:
    """Write the package's artifacts under ``dest``; returns the pyfunc ``artifacts`` map."""
    from siamese.embedding import load_state_dict, save_safetensors
    from siamese.io import read_json, write_json

    model_dir, dest = Path(model_dir), Path(dest)
    enc = dest / "encoder"
    enc.mkdir(parents=True, exist_ok=True)
    config = read_json(model_dir / "model.json")
    save_safetensors(load_state_dict(model_dir), enc / "model.safetensors")
    write_json(enc / "model.json", config)
    write_json(
        dest / "preprocessing.json",
        preprocessing_spec(config["image_size"], max_pixels, max_request_bytes),
    )
    write_json(dest / "calibration.json", calibration_spec(calibration))
    return {
        "encoder": str(enc),
        "preprocessing": str(dest / "preprocessing.json"),
        "calibration": str(dest / "calibration.json"),
    }


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

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


def example_frame(image_size: int) -> pd.DataFrame:
    """A one-pair input example (two synthetic gradients at the model's size)."""
    ramp = np.linspace(0, 255, image_size, dtype=np.float64)
    a = np.add.outer(ramp, ramp) / 2
    return pd.DataFrame(
        {
            "image_a": [encode_png(a.astype(np.uint8))],
            "image_b": [encode_png(a.T[::-1].astype(np.uint8))],
        }
    )


def pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("mlflow", "torch", "numpy", "pandas", "pillow", "safetensors"):
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            out.append(name)
    return out


def pyfunc_kwargs(artifacts: dict[str, str], image_size: int) -> dict:
    """Arguments of ``mlflow.pyfunc.log_model`` / ``save_model`` for a built package."""
    return {
        "python_model": str(MODEL_CODE),
        "artifacts": artifacts,
        "code_paths": [str(Path(__file__).resolve().parent)],
        "signature": signature(),
        "input_example": example_frame(image_size),
        "pip_requirements": pip_requirements(),
    }


def save_package(
    path: str | Path,
    model_dir: str | Path,
    calibration: dict,
    max_pixels: int | None,
    *,
    max_request_bytes: int | None = None,
) -> Path:
    """Save the pyfunc model to a local folder (``mlflow models serve -m PATH`` serves it)."""
    import tempfile

    from siamese.io import read_json

    image_size = read_json(Path(model_dir) / "model.json")["image_size"]
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = build_package(
            model_dir, calibration, max_pixels, tmp, max_request_bytes=max_request_bytes
        )
        mlflow.pyfunc.save_model(str(path), **pyfunc_kwargs(artifacts, image_size))
    return Path(path)


def encode_png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def pairs_frame(images: np.ndarray, a: np.ndarray, b: np.ndarray) -> pd.DataFrame:
    """A pyfunc input frame of PNG-encoded pairs from indexed uint8 images."""
    cache: dict[int, bytes] = {}

    def enc(i: int) -> bytes:
        if i not in cache:
            cache[i] = encode_png(images[i])
        return cache[i]

    return pd.DataFrame({"image_a": [enc(int(i)) for i in a], "image_b": [enc(int(i)) for i in b]})


def dataframe_split_json(frame: pd.DataFrame, params: dict | None = None) -> str:
    """The ``/invocations`` request body for a frame of image bytes (base64 strings)."""
    cols = list(frame.columns)
    rows = [[b64(v) if isinstance(v, bytes) else v for v in row] for row in frame.to_numpy()]
    body: dict[str, Any] = {"dataframe_split": {"columns": cols, "data": rows}}
    if params:
        body["params"] = params
    return json.dumps(body)
