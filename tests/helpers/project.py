"""A fresh copy of the project and its tools: the copy itself (with its own git repo, DVC repo and
MLflow store), the environment a user's shell gives its commands, and DVC run in it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks._common import ROOT, SHARED_DATA, make_project, tool_env

__all__ = ["ROOT", "SHARED_DATA", "dvc_json", "make_project", "start_dvc", "tool_env"]


def start_dvc(project: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``dvc ARGS`` in the project, in its own session (so a test can kill its whole tree), output
    (stdout and stderr) to a pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "dvc", *args],
        cwd=project,
        env=env or tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def dvc_json(project: Path, *args: str, env: dict | None = None):
    """A DVC command's ``--json`` output, run in the project like a user would."""
    out = subprocess.run(
        [sys.executable, "-m", "dvc", *args, "--json"],
        cwd=project,
        env=env or tool_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout or "{}")
