"""Decode any supported image into the one representation every stage uses: a uint8 array of
shape (H, W, C), channels last (C = 1 grayscale, C = 3 RGB), resized as ``data.resize`` says.
Keeping this in one place means training, evaluation and serving see identical pixels."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _border_colour(img: Image.Image) -> int | tuple[int, ...]:
    """The image's own background: the per-channel median of its border pixels (a signature's
    paper, a product shot's backdrop), so letterboxing adds no edge the encoder could learn."""
    arr = np.asarray(img)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    median = np.median(border, axis=0)
    if np.ndim(median) == 0:
        return int(round(float(median)))
    return tuple(int(round(float(v))) for v in median)


def _stretch(img: Image.Image, width: int, height: int) -> Image.Image:
    if img.size == (width, height):
        return img
    return img.resize((width, height), Image.Resampling.BILINEAR)


def _pad(img: Image.Image, width: int, height: int) -> Image.Image:
    return ImageOps.pad(img, (width, height), Image.Resampling.BILINEAR, color=_border_colour(img))


def _crop(img: Image.Image, width: int, height: int) -> Image.Image:
    return ImageOps.fit(img, (width, height), Image.Resampling.BILINEAR)


# data.resize: how an image of any shape becomes height x width (the config's allowed values)
RESIZES: dict[str, Callable[[Image.Image, int, int], Image.Image]] = {
    # today's behaviour: scale each axis to fit (the aspect ratio changes)
    "stretch": _stretch,
    # keep the aspect ratio, scale the long side to fit and letterbox with the image's own
    # background (the median of its border pixels): wide signatures keep their shape
    "pad": _pad,
    # keep the aspect ratio, scale the short side to fit and cut the centre out
    "crop": _crop,
}
CHANNELS = (1, 3)  # data.channels: grayscale or RGB


@dataclass(frozen=True)
class ImageSpec:
    """What every image becomes: ``height`` x ``width`` pixels, ``channels`` 1 (gray) or 3
    (RGB), resized by ``resize``. Built from params (``data.*``), stored with the model and in
    the package's ``preprocessing.json``, so serving decodes exactly as training did."""

    height: int
    width: int
    channels: int = 1
    resize: str = "stretch"

    def __post_init__(self) -> None:
        if self.channels not in CHANNELS:
            raise ValueError(f"channels must be one of {CHANNELS} (got {self.channels!r})")
        if self.resize not in RESIZES:
            raise ValueError(f"unknown resize {self.resize!r}; allowed: {', '.join(RESIZES)}")

    @classmethod
    def of(
        cls, size: int | list[int] | tuple[int, int], channels: int = 1, resize: str = "stretch"
    ) -> ImageSpec:
        """From ``data.image_size`` (S: a square, or [H, W])."""
        if isinstance(size, int | np.integer):
            return cls(int(size), int(size), channels, resize)
        height, width = size
        return cls(int(height), int(width), channels, resize)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ImageSpec:
        """From an encoder's config (``model.json``) or ``preprocessing.json``; a model saved
        before colour and resize existed is the grayscale stretch it was trained on."""
        return cls.of(
            cfg["image_size"], int(cfg.get("in_channels", 1)), cfg.get("resize", "stretch")
        )

    @classmethod
    def from_preprocessing(cls, pre: dict[str, Any]) -> ImageSpec:
        """From a package's ``preprocessing.json``. A package written before colour and resize
        existed has no ``channels`` and described its (always stretch) resize in words."""
        if "channels" not in pre:
            return cls.of(pre["image_size"])
        return cls.of(pre["image_size"], int(pre["channels"]), pre["resize"])

    @property
    def size(self) -> int | list[int]:
        """``image_size`` as params write it: S for a square, [H, W] otherwise."""
        return self.height if self.height == self.width else [self.height, self.width]

    @property
    def shape(self) -> tuple[int, int, int]:
        """The (H, W, C) shape of one decoded image."""
        return (self.height, self.width, self.channels)


def as_spec(spec: ImageSpec | int) -> ImageSpec:
    """An ``ImageSpec``, or a plain side length as the square grayscale stretch it always was."""
    return spec if isinstance(spec, ImageSpec) else ImageSpec.of(spec)


def _to_array(img: Image.Image, spec: ImageSpec | int) -> np.ndarray:
    spec = as_spec(spec)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() or 1.0
        img = Image.fromarray((arr / top * 255.0).astype(np.uint8))
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    # a grayscale image in a colour dataset is expanded to three equal channels
    img = img.convert("L" if spec.channels == 1 else "RGB")
    img = RESIZES[spec.resize](img, spec.width, spec.height)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def decode_image(
    data: bytes,
    size: ImageSpec | int,
    name: str = "image",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode encoded image bytes to an (H, W, C) uint8 array as ``size`` says (an int: a
    square grayscale stretch), upright (an EXIF
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
                return _to_array(img, size)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImageError(f"{name}: refused as a decompression bomb ({err})") from None
    except UnidentifiedImageError:
        raise BadImageError(f"{name}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImageError(f"{name}: not a readable image ({err})") from None


def read_image(path: str | Path, size: ImageSpec | int) -> np.ndarray:
    return decode_image(read_file(path), size, name=str(path))


def resize_array(arr: np.ndarray, size: ImageSpec | int) -> np.ndarray:
    """Resize a float array in [0, 1] or uint8 array, (H, W) or (H, W, 1|3), to the (H, W, C)
    uint8 array ``size`` describes."""
    if arr.dtype != np.uint8:
        arr = np.clip(np.asarray(arr, dtype=np.float64) * 255.0, 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return _to_array(Image.fromarray(np.ascontiguousarray(arr)), size)


def array_image(
    arr: np.ndarray,
    size: ImageSpec | int,
    name: str = "image",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """An in-memory image, (H, W) gray or (H, W, 1|3|4) gray/RGB/RGBA, uint8 or float in [0, 1],
    to the same (H, W, C) uint8 array its PNG would decode to."""
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
    return _to_array(Image.fromarray(np.ascontiguousarray(arr)), size)


def encode_png(image: np.ndarray) -> bytes:
    """A uint8 image, (H, W) or (H, W, 1|3), as PNG bytes: how the package's input example and
    request clients send it."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
