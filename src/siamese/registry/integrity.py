"""Tamper evidence for model packages: the SHA-256 of every file of a package (weights,
architecture, preprocessing, calibration) recorded in its ``checksums.json`` when it is built,
and checked before a package is served or scored.

Two records guard a registered version: the package's own ``checksums.json`` (checked by the
served model's ``load_context``, so ``mlflow models serve`` refuses to start on altered weights)
and the version's ``siamese.model_sha256`` tag (checked by siamese's own loaders, so a package
rewritten together with its ``checksums.json`` is refused too). Either mismatch is a
``PackageIntegrityError`` naming the file and both digests."""

from __future__ import annotations

import hashlib
from pathlib import Path

from siamese.errors import PackageIntegrityError
from siamese.io import read_json, write_json

CHECKSUMS_FILE = "checksums.json"
ALGORITHM = "sha256"
_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def package_files(root: str | Path) -> list[Path]:
    """The files of a package folder that its checksums cover (all but the record itself)."""
    root = Path(root)
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.name != CHECKSUMS_FILE and "__pycache__" not in p.parts
    )


def write_checksums(root: str | Path) -> Path:
    """Record the SHA-256 of every file under ``root`` in ``root/checksums.json``."""
    root = Path(root)
    files = {p.relative_to(root).as_posix(): file_sha256(p) for p in package_files(root)}
    path = root / CHECKSUMS_FILE
    write_json(path, {"algorithm": ALGORITHM, "files": files})
    return path


def verify_checksums(checksums: str | Path, what: str = "the model package") -> None:
    """Check every file ``checksums`` records (paths relative to its folder) against its
    SHA-256; a ``PackageIntegrityError`` naming the first file that differs or is gone."""
    checksums = Path(checksums)
    record = read_json(checksums)
    root = checksums.parent
    if record.get("algorithm") != ALGORITHM or not isinstance(record.get("files"), dict):
        raise PackageIntegrityError(
            f"{what}: {checksums} is not a {ALGORITHM} checksum record; refusing to serve it"
        )
    for rel, recorded in sorted(record["files"].items()):
        path = root / rel
        if not path.is_file():
            raise PackageIntegrityError(
                f"{what}: {rel} is missing (its SHA-256 was recorded as {recorded}); the "
                "package was altered after it was built and is refused"
            )
        actual = file_sha256(path)
        if actual != recorded:
            raise PackageIntegrityError(
                f"{what}: {rel} was altered after registration: SHA-256 {actual}, recorded "
                f"{recorded} in {CHECKSUMS_FILE}. Refusing to serve it; restore the file from "
                "the artifact store's backup, or `siamese rollback` to the previous champion"
            )
