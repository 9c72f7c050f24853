"""``siamese data download``: fetch a public benchmark archive from its official location and
verify it against a pinned checksum before it appears under its final name.

The archive is streamed to a temporary file next to the destination, hashed on the way, and only
renamed into place when a checksum matches; on any failure nothing is left behind. The loaders
read zip archives directly, so the downloaded file can be used as ``data.source`` as it is.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from siamese.errors import DownloadError

_OMNIGLOT = "https://github.com/brendenlake/omniglot/raw/master/python"


@dataclass(frozen=True)
class Archive:
    name: str
    url: str
    filename: str
    description: str
    # accepted checksums as (algorithm, hex digest); a download must match one of them
    checksums: tuple[tuple[str, str], ...] = field(default_factory=tuple)


# Checksums: the SHA-256 of the background archive is that of the project's reference copy
# (../shared/data/omniglot/images_background.zip, 19,280 images; a repackaged copy of the
# official archive). The MD5 digests are those torchvision pins for the official GitHub files
# (torchvision.datasets.Omniglot.zips_md5); no SHA-256 of the official files is known here.
# Every download prints its SHA-256 so it can be pinned once seen.
ARCHIVES: dict[str, Archive] = {
    a.name: a
    for a in (
        Archive(
            "omniglot-background",
            f"{_OMNIGLOT}/images_background.zip",
            "images_background.zip",
            "Omniglot background set: 30 alphabets, 964 characters, 19,280 images (MIT licence)",
            (
                ("sha256", "10ed8a78c77aa9f7d407a8a12b6eaef6b6529c9816aca331e1fe7e9d1159a619"),
                ("md5", "68d2efa1b9178cc56df9314c21c6e718"),
            ),
        ),
        Archive(
            "omniglot-evaluation",
            f"{_OMNIGLOT}/images_evaluation.zip",
            "images_evaluation.zip",
            "Omniglot evaluation set: 20 alphabets, 659 characters, 13,180 images (MIT licence)",
            (("md5", "6b91aef0f799c5bb55b94e3f2daec811"),),
        ),
    )
}


def _digests(path: Path) -> dict[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            md5.update(chunk)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def _matches(digests: dict[str, str], accepted: tuple[tuple[str, str], ...]) -> bool:
    return any(digests[algo] == want.lower() for algo, want in accepted)


def _accepted(archive: Archive, sha256: str | None) -> tuple[tuple[str, str], ...]:
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise DownloadError(f"--sha256 {sha256!r} is not a SHA-256 digest (64 hex digits)")
        return (("sha256", sha256),)
    if not archive.checksums:
        raise DownloadError(
            f"no checksum is known for {archive.name}; pass the expected one with --sha256"
        )
    return archive.checksums


def _describe(accepted: tuple[tuple[str, str], ...]) -> str:
    return " or ".join(f"{algo} {hexdigest}" for algo, hexdigest in accepted)


def download(
    name: str,
    dest: str | Path = "data",
    url: str | None = None,
    sha256: str | None = None,
    force: bool = False,
    timeout: float = 60.0,
) -> dict:
    """Download archive ``name`` into ``dest`` and verify it; return what was done.

    ``url`` replaces the official location (a mirror, or a ``file://`` URL); ``sha256`` replaces
    the pinned checksums. An existing, verified file is kept; one that does not verify is an
    error unless ``force``."""
    if name not in ARCHIVES:
        raise DownloadError(f"unknown dataset {name!r}; known: {', '.join(ARCHIVES)}")
    archive = ARCHIVES[name]
    accepted = _accepted(archive, sha256)
    dest = Path(dest)
    target = dest / archive.filename
    if target.exists() and not force:
        digests = _digests(target)
        if _matches(digests, accepted):
            return {"path": str(target), "sha256": digests["sha256"], "downloaded": False}
        raise DownloadError(
            f"{target} exists but does not match {_describe(accepted)} (its sha256 is "
            f"{digests['sha256']}); delete it or pass --force to download it again"
        )
    dest.mkdir(parents=True, exist_ok=True)
    source = url or archive.url
    fd, tmp_name = tempfile.mkstemp(dir=dest, prefix=f".{archive.filename}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(source, timeout=timeout) as response:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
            except (OSError, ValueError) as err:  # URLError is an OSError
                raise DownloadError(f"cannot download {name} from {source}: {err}") from None
        digests = _digests(tmp)
        if not _matches(digests, accepted):
            raise DownloadError(
                f"checksum mismatch for {name} from {source}: expected {_describe(accepted)}, "
                f"got sha256 {digests['sha256']} (md5 {digests['md5']}); the file was removed"
            )
        os.chmod(tmp, 0o644)  # mkstemp creates it private
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"path": str(target), "sha256": digests["sha256"], "downloaded": True, "url": source}
