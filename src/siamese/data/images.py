"""Decode any supported image into the one representation every stage uses: a square grayscale
uint8 array. Keeping this in one place means training, evaluation and serving see identical
pixels."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from siamese.data.files import read_file
from siamese.errors import BadImageError

# The raster formats a dataset may hold: every one Pillow decodes by itself here (the codec-backed
# ones only where this Pillow was built with the codec). Pillow also registers formats it only
# identifies (stubs such as HDF5, GRIB, WMF off Windows), needs an outside program for (EPS:
# Ghostscript) or that are not pictures (MPEG, FITS, icons, PSD layers); a file of those, like any
# other file, is not read and is counted and named by the scanner instead of being decoded.
_RASTER_FORMATS = {
    "PNG": None,
    "JPEG": None,
    "PPM": None,
    "BMP": None,
    "DIB": None,
    "TIFF": None,
    "GIF": None,
    "TGA": None,
    "PCX": None,
    "SGI": None,
    "QOI": None,
    "WEBP": "webp",
    "AVIF": "avif",
    "JPEG2000": "jpg_2000",
}


def _image_extensions() -> frozenset[str]:
    Image.init()
    return frozenset(
        ext
        for ext, fmt in Image.registered_extensions().items()
        if fmt in _RASTER_FORMATS
        and fmt in Image.OPEN
        and (_RASTER_FORMATS[fmt] is None or features.check(_RASTER_FORMATS[fmt]))
    )


IMAGE_EXTENSIONS = _image_extensions()  # lower case, with the dot: .png, .jpg, .webp, ...


# refuse anything larger before decoding (serving lowers it with serve.max_pixels)
DEFAULT_MAX_PIXELS = 25_000_000


def _check_pixels(width: int, height: int, max_pixels: int | None, name: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise BadImageError(
            f"{name}: image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} pixels"
        )


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


def decode_image(
    data: bytes, size: int, name: str = "image", max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode encoded image bytes to a (size, size) uint8 grayscale array, upright (an EXIF
    orientation is applied). The pixel count declared in the header is checked against
    ``max_pixels`` (and PIL's decompression-bomb limit) before any pixel data is decoded. Every
    image input goes through here: prepare, ``data add``, galleries, ``verify`` and the served
    model."""
    if not data:
        raise BadImageError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:  # reads the header only
                _check_pixels(img.size[0], img.size[1], max_pixels, name)
                img.load()
                # a camera stores a rotated photo's pixels as shot and its orientation in EXIF;
                # applied here, training, galleries and serving all see the photo upright
                ImageOps.exif_transpose(img, in_place=True)
                if min(img.size) < 2:
                    raise BadImageError(
                        f"{name}: image is {img.size[0]}x{img.size[1]} pixels, too small"
                    )
                return _to_gray_array(img, size)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImageError(f"{name}: refused as a decompression bomb ({err})") from None
    except UnidentifiedImageError:
        raise BadImageError(f"{name}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImageError(f"{name}: not a readable image ({err})") from None


def read_image(path: str | Path, size: int) -> np.ndarray:
    return decode_image(read_file(path), size, name=str(path))


def resize_array(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize a float array in [0, 1] or uint8 array to (size, size) uint8."""
    if arr.dtype != np.uint8:
        arr = np.clip(np.asarray(arr, dtype=np.float64) * 255.0, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    return _to_gray_array(img, size)


def array_image(
    arr: np.ndarray, size: int, name: str = "image", max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """An in-memory image, (H, W) gray or (H, W, 1|3|4) gray/RGB/RGBA, uint8 or float in [0, 1],
    to the same (size, size) uint8 grayscale array its PNG would decode to."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        raise BadImageError(
            f"{name}: array of shape {arr.shape} is not an image; expected (H, W), (H, W, 3) "
            "or (H, W, 4)"
        )
    if arr.dtype.kind not in "uif" or arr.dtype.kind == "b":
        raise BadImageError(f"{name}: array of dtype {arr.dtype} is not an image")
    if min(arr.shape[:2]) < 2:
        raise BadImageError(f"{name}: image is {arr.shape[1]}x{arr.shape[0]} pixels, too small")
    _check_pixels(arr.shape[1], arr.shape[0], max_pixels, name)
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise BadImageError(f"{name}: array holds NaN or infinite values")
        scale = 255.0 if arr.dtype.kind == "f" else 1.0
        arr = np.clip(np.asarray(arr, dtype=np.float64) * scale, 0, 255).astype(np.uint8)
    return _to_gray_array(Image.fromarray(np.ascontiguousarray(arr)), size)


def encode_png(image: np.ndarray) -> bytes:
    """A uint8 image as PNG bytes: how the package's input example and request clients send it."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
