"""A fresh copy of the project and its tools: the copy itself (with its own git repo, DVC repo and
MLflow store), the environment a user's shell gives its commands, and DVC run in it."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from benchmarks._common import ROOT, SHARED_DATA, make_project, tool_env

__all__ = [
    "ROOT",
    "SHARED_DATA",
    "copy_project",
    "dvc_json",
    "make_project",
    "start_dvc",
    "tool_env",
]


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


def copy_project(src: Path, dest: Path) -> Path:
    """A copy of a project that has run (git, DVC cache, ``mlflow.db`` and ``mlartifacts``),
    independent of the original: the SQLite store records absolute artifact locations, so every
    text value under ``src`` in it is moved under ``dest``."""
    shutil.copytree(src, dest, symlinks=True)
    db = dest / "mlflow.db"
    if db.is_file():
        old, new = str(src.resolve()), str(dest.resolve())
        with sqlite3.connect(db) as con:
            query = "SELECT name FROM sqlite_master WHERE type='table'"
            tables = [r[0] for r in con.execute(query)]
            for table in tables:
                for _, col, kind, *_ in con.execute(f'PRAGMA table_info("{table}")').fetchall():
                    if "CHAR" in kind.upper() or "TEXT" in kind.upper():
                        con.execute(
                            f'UPDATE "{table}" SET "{col}" = replace("{col}", ?, ?) '
                            f'WHERE "{col}" LIKE ?',
                            (old, new, f"%{old}%"),
                        )
        con.close()
    return dest
