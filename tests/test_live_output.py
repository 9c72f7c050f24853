"""What a person sees while `siamese run` works (issue #17): stage output arriving as the stage
runs (one line per epoch, Lightning's bar on a terminal), and no third-party warning or notice
they cannot act on."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.params import FAST_PARAMS, QUICK
from tests.helpers.project import make_project, tool_env

# what a default (not --verbose) run must never print
NOISE = re.compile(r"warn|downloading artifacts|telemetry|git add|traceback", re.IGNORECASE)


def _run_in_terminal(cmd: list[str], cwd: Path, env: dict, timeout: float) -> tuple[int, list]:
    """Run ``cmd`` with a pseudo-terminal (120 columns) as its stdin, stdout and stderr, as in a
    user's shell; its exit code and each output line with the time it arrived."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
    )
    os.close(slave)
    lines: list[tuple[float, str]] = []
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            buf += chunk
            *done, buf = buf.split(b"\n")
            now = time.monotonic()
            lines += [(now, line.decode("utf-8", "replace")) for line in done]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        os.close(master)
    if buf:
        lines.append((time.monotonic(), buf.decode("utf-8", "replace")))
    return proc.wait(60), lines


@pytest.mark.slow  # a whole `siamese run` through DVC and Prefect's own server (~3-5 min)
@pytest.mark.integration
def test_run_in_a_terminal_streams_epochs_and_prints_no_warnings(tmp_path):
    project = make_project(tmp_path / "project", FAST_PARAMS + QUICK + ["train.max_epochs=2"])
    env = tool_env(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300")
    # as a user's shell: the project's own defaults decide (the test session turns these off)
    for key in ("PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED", "SIAMESE_PROGRESS"):
        env.pop(key, None)
    code, lines = _run_in_terminal(["siamese", "run", "--no-push"], project, env, timeout=900)
    text = "\n".join(line for _, line in lines)
    assert code == 0, text

    # the epoch lines came while the train stage ran, not in one burst when it had ended
    epochs = [(t, line) for t, line in lines if re.search(r"epoch [12]/2  step", line)]
    assert len(epochs) == 2, text
    assert all("train loss" in line and "val AUC" in line and "ETA" in line for _, line in epochs)
    # ... on lines of their own: what the terminal shows of each has no bar text in it
    shown = [line.rstrip("\r").rsplit("\r", 1)[-1] for _, line in epochs]
    assert not [line for line in shown if "it/s" in line or "epoch" not in line], text
    ends = [t for t, line in lines if re.search(r"stage-train.* Finished in state", line)]
    assert len(ends) == 1, text
    assert epochs[-1][0] < ends[0]
    # the rest of the stage (export, MLflow, DVC's lock) takes well over a second after the
    # first epoch; the old flow logged every line only once the stage process had exited
    assert ends[0] - epochs[0][0] > 1.0, [(round(t - ends[0], 2), line) for t, line in epochs]
    # Lightning's bar was drawn on the terminal (redrawn in place, never logged as lines)
    assert "it/s" in text and re.search(r"\r(\x1b\[K)?Epoch \d", text)
    assert not [line for _, line in lines if "| train | Epoch 0:" in line]

    # quiet by default: no warning, download bar, telemetry or git hint line
    assert not [line for _, line in lines if NOISE.search(line)], text
    assert "== siamese run summary ==" in text


def test_the_served_model_imports_without_a_type_hint_warning():
    # MLflow warned at import about a PythonModel.predict without type hints (issue #17)
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-c", "import siamese.registry.pyfunc"],
        env=tool_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Add type hints to the `predict` method" not in proc.stderr


def test_embedding_a_read_only_array_does_not_warn():
    # np.asarray of a decoded image is read-only; torch warned on every batch made from one
    from siamese.models.encoders import SiameseEncoder
    from siamese.models.loading import embed, embedding_distances

    encoder = SiameseEncoder("mlp", 8, 4, 8, True).eval()
    images = np.zeros((3, 8, 8), np.uint8)
    images.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        emb = embed(encoder, images)
        frozen = emb.astype(np.float64)
        frozen.setflags(write=False)
        d = embedding_distances(encoder, frozen, frozen)
    assert emb.shape == (3, 4) and np.allclose(d, 0.0)
    assert not images.flags.writeable


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_step_s_output_is_logged_by_line_and_progress_bars_only_drawn(monkeypatch):
    from pipelines.flow import _LiveOutput

    monkeypatch.delenv("SIAMESE_VERBOSE", raising=False)
    logger = logging.getLogger("test-live-output")
    logger.setLevel(logging.INFO)
    handler = _Lines()
    logger.addHandler(handler)
    terminal = io.StringIO()
    out = _LiveOutput("train", logger, quiet_failure=True, terminal=terminal)
    try:
        # as a stage under DVC writes it, cut at arbitrary points
        stream = (
            "Running stage 'train':\n> siamese train\n"
            "\rEpoch 0:  25%|##  | 1/4\rEpoch 0:  50%|#### | 2/4"
            "\r" + " " * 20 + "\rINFO epoch 1/2  step 4\n"
            "\rEpoch 1: 100%|########| 4/4\n"
            "error: train: out of memory\nUpdating lock file 'dvc.lock'\n\n"
            "To track the changes with git, run:\n\n\tgit add dvc.lock\n\n"
            "To enable auto staging, run:\n\n\tdvc config core.autostage true\n"
            "Use `dvc push` to send your updates to remote storage.\n"
        )
        for i in range(0, len(stream), 7):
            out.feed(stream[i : i + 7])
        # a bar cleared at the very end of a read, the next log line in the following read
        out.feed("\rEpoch 1:  50%|####| 2/4\r" + " " * 20 + "\r")
        out.feed("INFO epoch 2/2  step 8\nlast line, no newline")
        kept = out.close()
    finally:
        logger.removeHandler(handler)
    assert handler.lines == [
        "train | Running stage 'train':",
        "train | > siamese train",
        "train | INFO epoch 1/2  step 4",
        "train | Epoch 1: 100%|########| 4/4",  # the bar's final state, once
        "train | Updating lock file 'dvc.lock'",
        "train | INFO epoch 2/2  step 8",
        "train | last line, no newline",
    ]
    # the bar was drawn on the terminal, and cleared before the next logged line
    assert "Epoch 0:  50%|#### | 2/4" in terminal.getvalue()
    assert terminal.getvalue().endswith("\r\x1b[K")
    # the error line is kept for the error message (the CLI prints it once)
    assert "error: train: out of memory" in kept.splitlines()
