"""The MLflow pyfunc model: what production serves. It takes image pairs and returns the distance,
a similarity score, the calibrated probability and the match decision at the calibrated threshold,
using exactly the encoder, preprocessing and threshold that were evaluated; or, with the param
``mode="embed"``, the embedding of single images.

The package is a "model from code" (``serving_model.py`` plus the siamese package as code), never a
pickled object. Its artifacts are plain data:

* ``encoder/``: ``model.json`` (architecture config) and ``model.safetensors`` (the state dict);
* ``onnx/`` (unless ``serve.export_onnx: false``): ``encoder.onnx`` and ``distance.onnx``, checked
  against PyTorch on real images at registration, and ``onnx.json`` (opset, the measured
  parity, or why the encoder could not be exported; see siamese.models.onnx). With
  ``runtime: onnx`` in ``preprocessing.json`` (``serve.runtime``) onnxruntime runs the encoder;
  distances, probabilities and decisions are computed the same way for both runtimes;
* ``preprocessing.json``: image size, colour conversion, resampling, normalisation, pixel limit,
  request size and row limits, images per chunk, the runtime;
* ``calibration.json``: threshold strategy, threshold, distance -> probability map;
* ``checksums.json``: the SHA-256 of each file above, checked before anything is loaded (a
  package altered after registration is refused, see siamese.registry.integrity).

Images are decoded and embedded ``chunk_images`` at a time (the embedding batches of
:meth:`SiameseModel.embeddings` too, so chunked and whole-array results are identical): a
request's memory holds its input, one chunk of decoded images and the embeddings, never all its
decoded images.

Bad input (not an image, a decompression bomb, too many pixels, wrong columns or mode) raises an
``MlflowException`` with ``INVALID_PARAMETER_VALUE``, which ``mlflow models serve`` answers with
HTTP 400 and the message. Inside ``mlflow models serve`` the model also guards the scoring
server's request handling (see :func:`siamese.registry.guard.guard_scoring_server`): a request
without a Content-Type gets 415, a body over ``max_request_bytes`` 413, more than ``max_rows``
rows 413, invalid JSON or a non-string image cell 400; error messages are bounded, and a request
whose client has timed out stops between images."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from siamese.calibration.probability import apply_probability_map
from siamese.data.images import ImageSpec, array_image, decode_image
from siamese.errors import BadImageError
from siamese.io import read_json
from siamese.models.loading import embed, embedding_distances, load_encoder
from siamese.models.onnx import ENCODER_FILE, RUNTIMES, OnnxEncoder, exported, read_info
from siamese.registry.guard import (
    ServingError,
    check_deadline,
    check_rows,
    guard_scoring_server,
    set_serving_threads,
)
from siamese.registry.integrity import verify_checksums
from siamese.registry.serving_input import EMBED_COLUMN, INPUT_COLUMNS

MODES = ("pair", "embed")
# answered by a gallery package only (siamese.registry.gallery_package): one image per row
GALLERY_MODES = ("identify", "anomaly")
# images decoded and embedded at once, for packages that do not say (serve.chunk_images)
DEFAULT_CHUNK_IMAGES = 32
# what siamese.models.encoders.preprocess does; stored in the package and checked on load
NORMALIZATION = {"divide": 127.5, "subtract": 1.0}


def invalid_input(message: str) -> MlflowException:
    """Bad input: HTTP 400 with exactly this message (in process: an MlflowException)."""
    return ServingError(message, status=400, error_code=INVALID_PARAMETER_VALUE)


def _decode(value: Any, size: ImageSpec, name: str, max_pixels: int | None) -> np.ndarray:
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


class SiameseModel(mlflow.pyfunc.PythonModel):
    """The served model. ``load_context`` reads the package's artifacts (weights-only)."""

    def load_context(self, context) -> None:
        arts = context.artifacts
        if "checksums" in arts:  # packages built before checksums existed have none
            verify_checksums(arts["checksums"])
        set_serving_threads()  # first: an onnxruntime session takes torch's thread count
        encoder = load_encoder(arts["encoder"])
        preprocessing = read_json(arts["preprocessing"])
        self.setup(encoder, preprocessing, read_json(arts["calibration"]), arts.get("onnx"))
        self.gallery = None
        if "gallery" in arts:  # a gallery package: refused if other weights embedded it
            from siamese.registry.gallery_package import open_served_gallery

            self.gallery = open_served_gallery(arts["gallery"], self)
        guard_scoring_server(self.max_request_bytes, self.max_rows)

    def setup(
        self, encoder, preprocessing: dict, calibration: dict, onnx_dir: str | None = None
    ) -> SiameseModel:
        if preprocessing.get("normalization") != NORMALIZATION:
            raise ValueError(
                f"unsupported normalisation {preprocessing.get('normalization')}; this code "
                f"applies {NORMALIZATION}"
            )
        image = ImageSpec.from_preprocessing(preprocessing)
        trained = ImageSpec.from_config(encoder.config)
        if image != trained:
            raise ValueError(
                f"preprocessing.json ({image}) differs from the images the encoder was trained "
                f"on ({trained})"
            )
        self.encoder = encoder
        self.preprocessing = preprocessing
        self.calibration = calibration
        self.threshold = float(calibration["threshold"])
        self.probability_map = calibration.get("probability") or {"method": "none"}
        self.image = image  # size, channels and resize: as training decoded
        self.max_pixels = preprocessing.get("max_pixels")
        self.max_request_bytes = preprocessing.get("max_request_bytes")
        self.max_rows = preprocessing.get("max_rows")
        self.chunk_images = int(preprocessing.get("chunk_images") or DEFAULT_CHUNK_IMAGES)
        self.onnx_dir = onnx_dir
        # a package written before runtimes existed runs torch
        return self.use_runtime(preprocessing.get("runtime", "torch"))

    def use_runtime(self, runtime: str) -> SiameseModel:
        """Run the encoder with ``runtime``: ``torch`` (the PyTorch network) or ``onnx``
        (onnxruntime on the package's ONNX export, which registration checked against it).
        The package's own choice is ``serve.runtime``; ``verify``/``index``/``search
        --runtime`` override it in process. Distances are computed by the same code either
        way, so both runtimes answer within the export's parity tolerance."""
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; allowed: {', '.join(RUNTIMES)}")
        if runtime == "onnx":
            if not exported(self.onnx_dir):
                info = read_info(self.onnx_dir)
                why = (
                    "it was registered with serve.export_onnx: false"
                    if info is None
                    else f"its encoder could not be exported ({info.get('reason')})"
                )
                raise ValueError(f"this model has no ONNX export: {why}; use runtime torch")
            self.network = OnnxEncoder(f"{self.onnx_dir}/{ENCODER_FILE}")
        else:
            self.network = self.encoder
        self.runtime = runtime
        return self

    # typed: MLflow warns at import about a predict without type hints. A DataFrame hint turns
    # on no type-hint validation of its own: the package's signature validates the input
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        mode = (params or {}).get("mode", "pair")
        if mode in GALLERY_MODES and getattr(self, "gallery", None) is None:
            raise invalid_input(
                f"mode {mode!r} needs a gallery: serve the model's gallery package "
                "(models:/<name>-gallery@champion, see siamese register-gallery)"
            )
        if mode not in MODES + GALLERY_MODES:
            raise invalid_input(
                f"unknown mode {mode!r}; allowed: {', '.join(MODES + GALLERY_MODES)}"
            )
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
        check_rows(len(model_input))  # serving only: before any image is decoded
        try:
            if mode == "embed":
                return self._embed(model_input)
            if mode in GALLERY_MODES:
                emb = self._column_embeddings(model_input, [EMBED_COLUMN])
                return self.gallery.answer(emb, mode, self.encoder)
            return self._pairs(model_input)
        except BadImageError as err:
            raise invalid_input(str(err)) from None

    @staticmethod
    def _columns(mode: str) -> list[str]:
        return [EMBED_COLUMN] if mode in ("embed", *GALLERY_MODES) else list(INPUT_COLUMNS)

    def _column_embeddings(self, frame: pd.DataFrame, columns) -> np.ndarray:
        """float64 embeddings of the images of ``columns`` (all rows of the first column, then
        of the next), decoded and embedded ``chunk_images`` at a time into one reused buffer:
        the same batches, so the same numbers, as :meth:`embeddings` of all of them stacked,
        without ever holding all decoded images. Between images the request's deadline is
        checked (serving only)."""

        size, step = self.image, self.chunk_images
        total = len(frame) * len(columns)
        buffer = np.empty((min(step, total), *size.shape), np.uint8)
        out: np.ndarray | None = None  # float64 (total, D), allocated once D is known
        k = done = 0
        for col in columns:
            for i, value in enumerate(frame[col].tolist()):
                check_deadline(done, total)
                buffer[k] = _decode(value, size, f"row {i} {col}", self.max_pixels)
                k, done = k + 1, done + 1
                if k == step or done == total:
                    emb = embed(self.network, buffer[:k], batch_size=step)
                    if out is None:
                        out = np.empty((total, emb.shape[1]), np.float64)
                    out[done - k : done] = emb
                    k = 0
        if out is None:
            return embed(self.network, buffer).astype(np.float64)  # (0, 1), as for no images
        return out

    def embeddings(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C) uint8 -> float64 (N, D) embeddings, exactly as evaluated, in batches of
        ``chunk_images`` (what requests are embedded in)."""

        return embed(self.network, images, batch_size=self.chunk_images).astype(np.float64)

    def _embed(self, frame: pd.DataFrame) -> pd.DataFrame:
        emb = self._column_embeddings(frame, [EMBED_COLUMN])
        return pd.DataFrame({"embedding": [row.tolist() for row in emb]})

    def _pairs(self, frame: pd.DataFrame) -> pd.DataFrame:
        return self.score(self._column_embeddings(frame, INPUT_COLUMNS), len(frame))

    def score(self, emb: np.ndarray, n: int) -> pd.DataFrame:
        """Pair outputs from the stacked embeddings of n ``image_a`` then n ``image_b``."""

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
