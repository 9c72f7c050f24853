"""A training's epoch checkpoint: where it is, and the wait for a running training to write it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from siamese import paths
from siamese.training.resume import scratch_dir


def last_checkpoint(project: Path) -> Path:
    """The epoch checkpoint an interrupted training of ``project`` resumes from."""
    return project / scratch_dir(paths.TRAIN) / "checkpoints" / "last.ckpt"


def wait_for_checkpoint(project: Path, proc: subprocess.Popen, timeout: float = 300) -> Path:
    """Poll until the training run by ``proc`` wrote its first epoch checkpoint; its path."""
    path = last_checkpoint(project)
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"exited ({proc.returncode}) before a checkpoint:\n{out}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no checkpoint in {timeout:.0f} s")
        time.sleep(0.05)
    return path
