"""Client side of a served model: the input frame and the ``/invocations`` request body for
image pairs, as ``siamese promote``, the benchmarks and any Python caller of ``mlflow models
serve`` build them (images as PNG bytes, sent as base64 strings)."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pandas as pd

from siamese.data.images import encode_png


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
