"""Real servers for the integration tests: started as subprocesses on a free port, waited for
over HTTP, and stopped (their whole process group) afterwards. The process handling is shared
with the benchmarks (benchmarks/_common.py); the MLflow tracking server's command is the
tests' own."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks._common import background, free_port, launch, log_tail, stop, wait_http

__all__ = [
    "background",
    "free_port",
    "launch",
    "log_tail",
    "mlflow_server_cmd",
    "stop",
    "wait_http",
]


def mlflow_server_cmd(port: int, backend_store_uri: str, artifacts: Path) -> list[str]:
    """`mlflow server` on 127.0.0.1:port, one worker, artefacts served from ``artifacts``."""
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", "1", "--serve-artifacts"]
    cmd += ["--backend-store-uri", backend_store_uri]
    return cmd + ["--artifacts-destination", artifacts.as_uri()]
