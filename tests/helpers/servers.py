"""Real servers for the integration tests: started as subprocesses on a free port, waited for
over HTTP, and stopped (their whole process group) afterwards. The process handling is shared
with the benchmarks (benchmarks/_common.py); the MLflow tracking server's command, its
PostgreSQL database and its auth app are the tests' own."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tomllib
import uuid
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from benchmarks._common import background, free_port, launch, log_tail, stop, wait_http

__all__ = [
    "AUTH_APP",
    "auth_app_pythonpath",
    "background",
    "free_port",
    "launch",
    "log_tail",
    "mlflow_server_cmd",
    "postgres_database",
    "stop",
    "wait_http",
]

PG = os.environ.get("SIAMESE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
AUTH_APP = "siamese-auth"  # the mlflow.app entry point of pyproject.toml
ROOT = Path(__file__).resolve().parents[2]


def mlflow_server_cmd(
    port: int, backend_store_uri: str, artifacts: Path, app_name: str | None = None
) -> list[str]:
    """`mlflow server` on 127.0.0.1:port, one worker, artefacts served from ``artifacts``
    (with ``app_name``: that app, e.g. the siamese-auth users and roles)."""
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", "1", "--serve-artifacts"]
    cmd += ["--backend-store-uri", backend_store_uri]
    if app_name:
        cmd += ["--app-name", app_name]
    return cmd + ["--artifacts-destination", artifacts.as_uri()]


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the PostgreSQL server (its URL), dropped afterwards; skips the test
    where PostgreSQL or psycopg2 is missing."""
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2-binary is not installed")
    try:
        admin = psycopg2.connect(f"{PG}/postgres", connect_timeout=5)
    except psycopg2.OperationalError as err:
        pytest.skip(f"PostgreSQL unreachable at {PG} ({err}); set SIAMESE_TEST_POSTGRES")
    admin.autocommit = True
    name = f"siamese_mlflow_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def auth_app_pythonpath(dest: Path) -> str:
    """The PYTHONPATH under which ``mlflow server --app-name siamese-auth`` finds the app.

    The app is pyproject.toml's ``mlflow.app`` entry point; an environment installed before it
    existed lacks it until reinstalled, so then a dist-info folder under ``dest`` declares
    pyproject's entry points. Skips the test where MLflow's auth extras (Flask-WTF) are
    missing."""
    if importlib.util.find_spec("flask_wtf") is None:
        pytest.skip("MLflow's auth extras are not installed: pip install -e '.[server]'")
    path = [ROOT / "src", ROOT]
    if not any(ep.name == AUTH_APP for ep in entry_points(group="mlflow.app")):
        declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        info = dest / "siamese_entry_points-0.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: siamese-entry-points\nVersion: 0\n"
        )
        lines = []
        for group, eps in declared["entry-points"].items():
            lines += [f"[{group}]", *(f"{k} = {v}" for k, v in eps.items()), ""]
        (info / "entry_points.txt").write_text("\n".join(lines))
        path.insert(0, dest)
    extra = os.environ.get("PYTHONPATH")
    return os.pathsep.join([*map(str, path), *([extra] if extra else [])])
