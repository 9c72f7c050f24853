"""What a data reader may read: a regular file, or a zip entry, no larger than a cap. Checked
before a byte is read, so a dataset entry that is a device (a link to /dev/zero), a FIFO (which
blocks forever) or a huge file (or a zip bomb) fails naming the entry instead of exhausting
memory; the read itself is bounded too, in case the file grows or a zip header lies."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

from siamese.errors import BadImageError

DEFAULT_MAX_FILE_BYTES = 100_000_000  # data.max_file_bytes: far above any photo or scan
# an image entry expanding more than this many times is a zip bomb, not a photo (PNG and JPEG
# barely compress; even raw PGM faces compress < 10x); applied to entries over ZIP_RATIO_FLOOR
MAX_ZIP_RATIO = 200
ZIP_RATIO_FLOOR = 1 << 20

_KINDS = {
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
    stat.S_ISDIR: "a folder",
}


def _too_large(name: str, size: int, max_bytes: int) -> BadImageError:
    return BadImageError(
        f"{name}: {size} bytes, over the limit of {max_bytes} bytes per file "
        "(data.max_file_bytes); remove it or raise the limit"
    )


def read_file(path: str | Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file (symlinks followed) of at most ``max_bytes``."""
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as err:
        if path.is_symlink():
            raise BadImageError(
                f"{path}: broken symlink (it points to {os.readlink(path)}, which does not exist)"
            ) from None
        raise BadImageError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = next((k for test, k in _KINDS.items() if test(info.st_mode)), "not a regular file")
        link = f" (a symlink to {os.readlink(path)})" if path.is_symlink() else ""
        raise BadImageError(f"{path}: {kind}{link}, not an image file; remove it")
    if info.st_size > max_bytes:
        raise _too_large(str(path), info.st_size, max_bytes)
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as err:
        raise BadImageError(f"{path}: cannot be read ({err.strerror or err})") from None
    if len(data) > max_bytes:  # grew since stat
        raise _too_large(str(path), len(data), max_bytes)
    return data


def read_zip_entry(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> bytes:
    """The bytes of a zip entry whose declared size and compression ratio are sane, read
    without ever decompressing more than ``max_bytes`` + 1 bytes."""
    if info.file_size > max_bytes:
        raise _too_large(name, info.file_size, max_bytes)
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > ZIP_RATIO_FLOOR and ratio > MAX_ZIP_RATIO:
        raise BadImageError(
            f"{name}: expands {ratio:.0f}x ({info.compress_size} -> {info.file_size} bytes), "
            f"refused as a zip bomb (images expand at most {MAX_ZIP_RATIO}x)"
        )
    try:
        with zf.open(info) as fh:
            data = fh.read(max_bytes + 1)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise BadImageError(f"{name}: cannot be read from the archive ({err})") from None
    if len(data) > max_bytes:  # the header understated the size
        raise _too_large(name, len(data), max_bytes)
    return data
