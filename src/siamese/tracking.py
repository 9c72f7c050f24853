"""MLflow and provenance helpers shared by the train and register stages."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import yaml

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"


def tracking_uri(project_dir: str | Path = ".") -> str:
    """MLFLOW_TRACKING_URI when set, else the project's own SQLite store."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path(project_dir).resolve() / DEFAULT_DB)}"


def ensure_experiment(name: str, project_dir: str | Path = ".") -> str:
    """Experiment id for ``name``, created with local artefacts when using the local store."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri(project_dir))
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if "MLFLOW_TRACKING_URI" not in os.environ:
        location = (Path(project_dir).resolve() / DEFAULT_ARTIFACTS).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def git_info(project_dir: str | Path = ".") -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=project_dir, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower()}


def file_md5(path: str | Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dir_md5(path: str | Path) -> str:
    """Content hash of a directory (file names and bytes), stable across machines."""
    path = Path(path)
    h = hashlib.md5()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(file_md5(f).encode())
    return h.hexdigest()


def dvc_lock_hashes(project_dir: str | Path = ".") -> dict[str, str]:
    """The DVC hashes of every dep/out recorded in dvc.lock, keyed ``dvc.<stage>.<path>``."""
    lock = Path(project_dir) / "dvc.lock"
    if not lock.is_file():
        return {}
    try:
        data = yaml.safe_load(lock.read_text()) or {}
    except yaml.YAMLError:
        return {}
    out = {}
    for stage, entry in (data.get("stages") or {}).items():
        for kind in ("deps", "outs"):
            for item in entry.get(kind) or []:
                digest = item.get("md5") or item.get("hash") or ""
                if digest and not item["path"].startswith("src"):
                    out[f"dvc.{stage}.{kind}.{item['path']}"] = digest
    return out


@contextlib.contextmanager
def active_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` for a block only. ``mlflow.set_tracking_uri`` also
    exports MLFLOW_TRACKING_URI, which would leak into every later stage of this process."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
