"""Score image pairs with an exported siamese model, with onnxruntime alone.

    python score_pair.py MODEL_DIR IMAGE_A IMAGE_B [IMAGE_A2 IMAGE_B2 ...]

MODEL_DIR is what ``siamese export --format onnx --out MODEL_DIR`` wrote: ``encoder.onnx``
(uint8 images -> embeddings), ``distance.onnx`` (two embeddings -> their distance under the
model's metric), ``preprocessing.json`` (how an image becomes the encoder's input) and
``calibration.json`` (the decision threshold and the distance -> probability map). Prints one
JSON object per pair: distance, similarity, probability, match.

Needs numpy, pillow and onnxruntime; never torch or siamese. siamese writes this file into each
export unchanged (it is ``siamese/registry/onnx_scoring.py``), and its tests run it in a fresh
interpreter against the served model: both decode images the same way (EXIF orientation, 16-bit
and alpha handling, grayscale or RGB, then ``preprocessing.json``'s resize), so their answers
agree within the export's parity tolerance.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


def _border_colour(img):
    """The per-channel median of the border pixels: what ``pad`` letterboxes with."""
    arr = np.asarray(img)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    median = np.median(border, axis=0)
    if np.ndim(median) == 0:
        return int(round(float(median)))
    return tuple(int(round(float(v))) for v in median)


def load_image(path, pre: dict) -> np.ndarray:
    """An image file as the encoder takes it: uint8 (H, W, C), decoded as ``pre`` says."""
    size = pre["image_size"]
    height, width = (size, size) if isinstance(size, int) else size
    channels = int(pre.get("channels", 1))
    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit: scaled by its maximum
            arr = np.asarray(img, dtype=np.float64)
            img = Image.fromarray((arr / (arr.max() or 1.0) * 255.0).astype(np.uint8))
        elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")  # transparency: composited on white
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255,) * 4), rgba)
        img = img.convert("L" if channels == 1 else "RGB")
        resize = pre.get("resize", "stretch")
        if resize == "pad":
            img = ImageOps.pad(img, (width, height), Image.Resampling.BILINEAR, _border_colour(img))
        elif resize == "crop":
            img = ImageOps.fit(img, (width, height), Image.Resampling.BILINEAR)
        elif img.size != (width, height):
            img = img.resize((width, height), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def probability(pmap: dict, d: np.ndarray) -> np.ndarray | None:
    """P(same identity) of each distance under ``calibration.json``'s map (None: no map)."""
    if pmap.get("method") == "platt":
        return 1.0 / (1.0 + np.exp(-np.clip(pmap["a"] * d + pmap["b"], -500, 500)))
    if pmap.get("method") == "isotonic":
        return np.interp(d, pmap["x"], pmap["y"])
    return None


class ExportedModel:
    """The exported folder's two graphs and two specs."""

    def __init__(self, folder):
        folder = Path(folder)
        self.pre = json.loads((folder / "preprocessing.json").read_text())
        self.calibration = json.loads((folder / "calibration.json").read_text())
        options = ort.SessionOptions()
        options.log_severity_level = 3
        cpu = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(folder / "encoder.onnx"), options, providers=cpu)
        self.distance = ort.InferenceSession(str(folder / "distance.onnx"), options, providers=cpu)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> float32 (N, D)."""
        return self.encoder.run(None, {"images": np.ascontiguousarray(images, np.uint8)})[0]

    def score(self, images_a: list, images_b: list) -> list[dict]:
        """Each pair's distance, similarity, probability and match at the threshold."""
        a = self.embed(np.stack([load_image(p, self.pre) for p in images_a]))
        b = self.embed(np.stack([load_image(p, self.pre) for p in images_b]))
        d = self.distance.run(None, {"a": a, "b": b})[0].astype(np.float64)
        prob = probability(self.calibration.get("probability") or {}, d)
        threshold = float(self.calibration["threshold"])
        return [
            {
                "distance": float(d[i]),
                "similarity": float(1.0 / (1.0 + d[i])),
                "probability": None if prob is None else float(prob[i]),
                "match": bool(d[i] <= threshold),
                "threshold": threshold,
            }
            for i in range(len(d))
        ]


def main(argv: list[str]) -> int:
    if len(argv) < 3 or len(argv) % 2 == 0:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    model = ExportedModel(argv[0])
    for row in model.score(argv[1::2], argv[2::2]):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
