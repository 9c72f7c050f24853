"""Hand-made image files for the tests of bad and unusual input: encoded bytes, built in memory."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width x height`` pixels (its data is ~20 bytes): a
    decompression bomb as far as the header goes."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    """``arr`` (uint8 gray/RGB/RGBA, or uint16 gray: a 16-bit PNG) encoded as ``fmt``."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, fmt)
    return buf.getvalue()


def reencode(data: bytes, fmt: str = "PNG") -> bytes:
    """An encoded image (e.g. a PGM photo) re-encoded as ``fmt``, pixels unchanged (JPEG aside)."""
    with Image.open(io.BytesIO(data)) as img:
        buf = io.BytesIO()
        img.save(buf, fmt)
    return buf.getvalue()


def corrupt_png(seed: int = 0) -> bytes:
    """A valid PNG signature followed by garbage."""
    return b"\x89PNG\r\n\x1a\n" + np.random.default_rng(seed).bytes(200)


def rgba_square(size: int = 40) -> bytes:
    """An RGBA PNG: a fully transparent (black underneath) background with an opaque black
    square in the middle quarter; composited on white it is a black square on white."""
    arr = np.zeros((size, size, 4), np.uint8)
    q = size // 4
    arr[q : size - q, q : size - q, 3] = 255
    return encode(arr)


def gradient_16bit(size: int = 48) -> bytes:
    """A 16-bit grayscale PNG: a horizontal ramp over the whole 0..65535 range."""
    ramp = np.linspace(0, 65535, size).round().astype(np.uint16)
    return encode(np.tile(ramp, (size, 1)))


def exif_rotated_jpeg(upright: np.ndarray) -> bytes:
    """A JPEG as a camera held sideways writes it: the pixels stored turned 90 degrees
    counter-clockwise and EXIF orientation 6 ("rotate 90 clockwise to view"), so a viewer that
    honours EXIF shows ``upright``."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(
        buf, "JPEG", exif=exif, quality=95
    )
    return buf.getvalue()
