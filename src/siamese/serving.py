"""The MLflow pyfunc model: what production serves. It takes image pairs and returns the distance,
a similarity score and the match decision at the calibrated threshold, using exactly the encoder,
preprocessing and threshold that were evaluated."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

INPUT_COLUMNS = ("image_a", "image_b")


def _decode(value: Any, size: int, name: str) -> np.ndarray:
    from siamese.data.images import BadImageError, decode_image, resize_array

    if isinstance(value, np.ndarray) and value.ndim >= 2:
        arr = value if value.ndim == 2 else value.mean(axis=-1)
        return resize_array(arr, size)
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadImageError(f"{name}: string input is not valid base64") from None
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise BadImageError(f"{name}: expected encoded image bytes, got {type(value).__name__}")
    return decode_image(value, size, name=name)


class SiamesePyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import json

        from siamese.embedding import load_encoder

        self.encoder = load_encoder(context.artifacts["model_dir"])
        with open(context.artifacts["calibration"]) as fh:
            self.calibration = json.load(fh)
        self.threshold = float(self.calibration["threshold"])
        self.probability_map = self.calibration.get("probability", {"method": "none"})
        self.image_size = self.encoder.config["image_size"]

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from siamese.embedding import embed, embedding_distances
        from siamese.probability import apply_probability_map

        missing = [c for c in INPUT_COLUMNS if c not in model_input.columns]
        if missing:
            raise ValueError(
                f"input is missing column(s) {missing}; expected {list(INPUT_COLUMNS)}"
            )
        n = len(model_input)
        imgs = [
            _decode(v, self.image_size, f"row {i} {col}")
            for col in INPUT_COLUMNS
            for i, v in enumerate(model_input[col].tolist())
        ]
        if n == 0:
            d = np.zeros(0)
        else:
            emb = embed(self.encoder, np.stack(imgs)).astype(np.float64)
            d = embedding_distances(self.encoder, emb[:n], emb[n:])
        prob = apply_probability_map(self.probability_map, d)
        return pd.DataFrame(
            {
                "distance": d,
                "similarity": 1.0 / (1.0 + d),
                "probability": np.full(n, np.nan) if prob is None else prob,
                "match": d <= self.threshold,
            }
        )


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image_a"), ColSpec("binary", "image_b")]),
        outputs=Schema(
            [
                ColSpec("double", "distance"),
                ColSpec("double", "similarity"),
                ColSpec("double", "probability"),
                ColSpec("boolean", "match"),
            ]
        ),
    )


def encode_png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def pairs_frame(images: np.ndarray, a: np.ndarray, b: np.ndarray) -> pd.DataFrame:
    """A pyfunc input frame of PNG-encoded pairs from indexed uint8 images."""
    cache: dict[int, bytes] = {}

    def enc(i: int) -> bytes:
        if i not in cache:
            cache[i] = encode_png(images[i])
        return cache[i]

    return pd.DataFrame({"image_a": [enc(int(i)) for i in a], "image_b": [enc(int(i)) for i in b]})
