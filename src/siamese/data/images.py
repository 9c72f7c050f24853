"""Decode any supported image into the one representation every stage uses: a square grayscale
uint8 array. Keeping this in one place means training, evaluation and serving see identical
pixels."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".bmp", ".tif", ".tiff", ".gif"}
)


class BadImageError(ValueError):
    """An input could not be decoded as an image; the message names the input."""


def _to_gray_array(img: Image.Image, size: int) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() or 1.0
        img = Image.fromarray((arr / top * 255.0).astype(np.uint8))
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    img = img.convert("L")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def decode_image(data: bytes, size: int, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes to a (size, size) uint8 grayscale array."""
    if not data:
        raise BadImageError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                if min(img.size) < 2:
                    raise BadImageError(
                        f"{name}: image is {img.size[0]}x{img.size[1]} pixels, too small"
                    )
                return _to_gray_array(img, size)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImageError(f"{name}: refused as a decompression bomb ({err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BadImageError(f"{name}: not a readable image ({err})") from None


def read_image(path: str | Path, size: int) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BadImageError(f"{path}: cannot be read ({err})") from None
    return decode_image(data, size, name=str(path))


def resize_array(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize a float array in [0, 1] or uint8 array to (size, size) uint8."""
    if arr.dtype != np.uint8:
        arr = np.clip(np.asarray(arr, dtype=np.float64) * 255.0, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    return _to_gray_array(img, size)
