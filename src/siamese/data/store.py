"""The prepared images on disk: one uncompressed ``.npy`` array, (N, H, W, C) uint8, opened
memory-mapped. A stage then holds only the pages it touches (the kernel shares them between
processes and evicts them under pressure), so its resident memory does not grow with the
dataset, and DataLoader workers read the same file instead of each receiving a pickled copy.

The file is written through ``open_memmap`` in place (prepare's scratch folder), grown or shrunk
by rewriting its header: numpy reserves room in the header for the first axis to grow, so a
shape change never moves the pixel data."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

IMAGES_FILE = "images.npy"
_COPY_ROWS = 1024  # rows moved per step when compacting: bounded memory


def create_images(path: str | Path, n: int, shape: tuple[int, int, int]) -> np.memmap:
    """A new (n, H, W, C) uint8 array file at ``path``, mapped for writing."""
    return npy.open_memmap(Path(path), mode="w+", dtype=np.uint8, shape=(n, *shape))


def _header(fh) -> tuple[tuple[int, ...], int, tuple[int, int]]:
    version = npy.read_magic(fh)
    read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, _, _ = read(fh)
    return shape, fh.tell(), version


def resize_rows(path: str | Path, n: int) -> np.memmap:
    """Give the array file at ``path`` ``n`` rows (first axis), keeping the rows it has up to
    ``n``; added rows are zero. Returns the file mapped for writing."""
    path = Path(path)
    with open(path, "r+b") as fh:
        shape, offset, version = _header(fh)
        new_shape = (n, *shape[1:])
        fh.seek(0)
        header = {"descr": "|u1", "fortran_order": False, "shape": new_shape}
        if version == (1, 0):
            npy.write_array_header_1_0(fh, header)
        else:
            npy.write_array_header_2_0(fh, header)
        if fh.tell() != offset:  # cannot happen with numpy's growth padding; never corrupt data
            raise RuntimeError(f"{path}: the header would move the data; rewrite the file")
        fh.truncate(offset + int(np.prod(new_shape)))
    return np.load(path, mmap_mode="r+")


def keep_rows(images: np.ndarray, keep: np.ndarray | list[int]) -> np.ndarray:
    """The rows ``keep`` (increasing indices) of ``images``. A memory-mapped file is compacted
    in place (each kept row moves down, never up, so nothing is overwritten before it is read)
    and shrunk; an in-memory array is indexed."""
    keep = np.asarray(keep, dtype=np.int64)
    if not isinstance(images, np.memmap) or images.filename is None:
        return images[keep]
    if len(keep) == len(images):
        return images
    for start in range(0, len(keep), _COPY_ROWS):
        rows = keep[start : start + _COPY_ROWS]
        images[start : start + len(rows)] = images[rows]
    images.flush()
    path = images.filename
    del images
    return resize_rows(path, len(keep))


class MappedImages:
    """The image file of a prepared dataset, opened memory-mapped (read only) on first use in
    each process. Indexing returns ordinary arrays of the rows asked for; pickling (what a
    DataLoader does to send a dataset to its workers) carries the path, not the pixels, so every
    worker maps the same file and shares its pages."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._array: np.memmap | None = None

    @property
    def array(self) -> np.memmap:
        """The whole (N, H, W, C) array, memory-mapped (nothing is read until it is indexed)."""
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def __getitem__(self, index):
        return self.array[index]

    def __len__(self) -> int:
        return len(self.array)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    @property
    def ndim(self) -> int:
        return self.array.ndim

    def release(self) -> None:
        """Drop this process's mapping of the pages read so far (they stay in the page cache
        for the next read). A streaming reader calls it after each batch, so its resident
        memory counts one batch of pixels, not every page it has touched."""
        mapping = getattr(self._array, "_mmap", None)  # numpy's mmap.mmap behind the array
        if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            mapping.madvise(mmap.MADV_DONTNEED)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self.array, dtype=dtype)

    def __getstate__(self) -> dict:
        return {"path": self.path, "_array": None}

    def __repr__(self) -> str:
        return f"MappedImages({os.fspath(self.path)!r})"
