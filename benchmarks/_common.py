"""What the benchmarks and the tests both need to run the project from outside: a fresh copy of
the project (its own git repo, DVC repo and MLflow store), the environment a user's shell gives
its commands, and servers started as subprocesses on a free port, waited for over HTTP and
stopped (their whole process group).

The benchmarks import it as ``_common`` (they run as scripts from this folder); the tests'
helpers (tests/helpers/project.py, tests/helpers/servers.py) import it as
``benchmarks._common``. It imports nothing from the tests and nothing outside the standard
library at import time."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SIAMESE_SHARED_DATA", ROOT.parent / "shared" / "data"))
PROJECT_FILES = (
    "params.yaml",
    "dvc.yaml",
    ".dvcignore",
    ".gitignore",
    "data",
    "params",
    "src",
    ".dvc/config",
)

# ------------------------------------------------------------------------ a copy of the project


def make_project(dest: Path, params_overrides: list[str] | None = None) -> Path:
    """A fresh copy of the project with its own git repo, DVC repo and MLflow store."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, target)
    if params_overrides:
        from siamese.params_file import set_params

        set_params(dest / "params.yaml", params_overrides)
    run = lambda *a: subprocess.run(a, cwd=dest, check=True, capture_output=True)  # noqa: E731
    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q", "--force")
    shutil.copy(ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "project copy")
    return dest


def tool_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell would give the project's commands: this venv's bin first."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return dict(os.environ, PATH=path, **extra)


# ------------------------------------------------------------------------ servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, n: int = 40) -> str:
    """The last ``n`` lines of a log ("" if it cannot be read)."""
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
            return f"exited with {proc.returncode}:\n{log_tail(log, 30)}"
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                if r.status == 200:
                    return None
        except OSError:
            pass
        time.sleep(0.5)
    return f"no answer from {url} in {timeout:.0f} s:\n{log_tail(log, 30)}"
