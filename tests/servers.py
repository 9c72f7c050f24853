"""Real servers for the integration tests: started as subprocesses on a free port, waited for
over HTTP, and stopped (their whole process group) afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def stop(proc: subprocess.Popen, grace: float = 5) -> None:
    """SIGTERM the process group we started, SIGKILL it if it does not exit in time."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def launch(cmd: list[str], log: Path, env: dict, cwd: Path | None = None) -> subprocess.Popen:
    """A command in its own process group, output appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def mlflow_server_cmd(port: int, backend_store_uri: str, artifacts: Path) -> list[str]:
    """`mlflow server` on 127.0.0.1:port, one worker, artefacts served from ``artifacts``."""
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", "1", "--serve-artifacts"]
    cmd += ["--backend-store-uri", backend_store_uri]
    return cmd + ["--artifacts-destination", artifacts.as_uri()]


@contextlib.contextmanager
def background(
    cmd: list[str], log: Path, env: dict, cwd: Path | None = None, grace: float = 5
) -> Iterator:
    """A command in its own process group, output to ``log``; stopped on exit (SIGTERM, then
    SIGKILL after ``grace`` seconds)."""
    proc = launch(cmd, log, env, cwd)
    try:
        yield proc
    finally:
        stop(proc, grace)


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> str | None:
    """None once ``url`` answers 200; otherwise why not (the process died, or timed out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with {proc.returncode}:\n{_tail(log)}"
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                if r.status == 200:
                    return None
        except OSError:
            pass
        time.sleep(0.5)
    return f"no answer from {url} in {timeout:.0f} s:\n{_tail(log)}"


def log_tail(path: Path, n: int = 40) -> str:
    return _tail(path, n)
