"""One pipeline run per project at a time.

Two runs on one workspace would interleave their DVC stages (one reading outputs the other is
replacing) and race for the registry aliases. DVC's own lock covers a single ``dvc`` command,
not a whole run of several, so a run holds this lock from before it touches ``params.yaml``
until its promotion is decided.

The lock is an ``flock`` on ``.dvc/tmp/siamese-run.lock``: the kernel releases it when the
holder exits, however it exits (a SIGKILL or a power cut leaves no stale lock to clean up). The
file's content (pid, host, start time, command) only serves the message a second run prints.
Child processes of the holder (the DVC stages, ``siamese promote``) inherit it through
``SIAMESE_PROJECT_LOCK`` and do not take it again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from siamese.errors import ProjectLockedError

log = logging.getLogger(__name__)
LOCK_FILE = Path(".dvc") / "tmp" / "siamese-run.lock"
HELD_ENV = "SIAMESE_PROJECT_LOCK"  # set while held: nested flows and child processes see it


def _describe_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return (
        f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}: "
        f"{info.get('command')}"
    )


@contextlib.contextmanager
def project_lock(project_dir: str | Path, wait_seconds: float = 0.0) -> Iterator[Path]:
    """Hold the project's run lock for the block; wait up to ``wait_seconds`` for it (0: fail
    at once with :class:`ProjectLockedError`)."""
    path = (Path(project_dir) / LOCK_FILE).resolve()
    key = str(path)
    if os.environ.get(HELD_ENV) == key:  # a nested flow, or a child process of the holder
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + max(wait_seconds, 0.0)
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _describe_holder(path)
                if time.monotonic() >= deadline:
                    raise ProjectLockedError(
                        f"another pipeline run is using this project ({holder}); lock file "
                        f"{path}. Nothing was changed. Wait for it to finish, or pass "
                        "--wait SECONDS to queue behind it"
                    ) from None
                if not announced:
                    log.warning("waiting for the pipeline run of %s to finish", holder)
                    announced = True
                time.sleep(0.5)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.environ[HELD_ENV] = key
        try:
            yield path
        finally:
            os.environ.pop(HELD_ENV, None)
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def gallery_lock(gallery: str | Path, shared: bool = False) -> Iterator[Path]:
    """Hold a gallery folder's lock for the block: exclusive for a writer (``siamese index``,
    ``enroll``, ``unenroll``), shared for a reader (``identify``, ``anomaly``), so a reader never
    sees a writer's two renames half done and two writers never build on the same old gallery.

    An ``flock`` on ``.<name>.lock`` beside the folder (the folder itself is replaced by each
    write); waits for the holder, who only holds it for seconds. The kernel releases it when the
    holder dies, however it dies."""
    gallery = Path(gallery)
    gallery.parent.mkdir(parents=True, exist_ok=True)
    path = gallery.parent / f".{gallery.name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
