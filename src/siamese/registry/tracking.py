"""MLflow and provenance helpers shared by the train and register stages."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.utils import mlflow_tags

from siamese.errors import (
    AccessDeniedError,
    TrackingRejectedError,
    TrackingUnavailableError,
    in_chain,
)
from siamese.io import file_md5

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
SOURCE_NAME = "siamese train"  # what the MLflow UI's Source column names (with the commit)
# MLflow retries an unreachable server 7 times with a 2 s backoff factor and a 120 s timeout per
# request: several minutes before a stage learns the server is gone. An unattended pipeline
# should fail within about a minute and say so; these bounds apply unless the variable is set.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def tracking_uri(project_dir: str | Path = ".") -> str:
    """MLFLOW_TRACKING_URI when set, else the project's own SQLite store."""
    for key, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return project_store_uri(project_dir)


def project_store_uri(project_dir: str | Path = ".") -> str:
    """The project's own SQLite tracking store (``mlflow.db``), used when no server is set."""
    return f"sqlite:///{(Path(project_dir).resolve() / DEFAULT_DB)}"


def client(uri: str | None = None) -> mlflow.MlflowClient:
    """The one way this project talks to the tracking store and model registry: an MlflowClient
    on ``uri``, by default the project's (see :func:`tracking_uri`)."""
    return mlflow.MlflowClient(uri or tracking_uri())


def is_tracking_unreachable(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) is a failure to reach the tracking server, as opposed
    to the server answering with an error."""

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return True
        text = str(err)
        if "API request to" in text and (
            "Max retries exceeded" in text or "Connection refused" in text or "timed out" in text
        ):
            return True
        err = err.__cause__ or err.__context__
    return False


def run_exists(client: mlflow.MlflowClient, run_id: str) -> bool:
    """Whether the tracking store holds the run (and it is not deleted). False after the store
    was lost or replaced (a new mlflow.db, another MLFLOW_TRACKING_URI); an unreachable server
    raises instead, since it says nothing about the run."""
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        if is_tracking_unreachable(err):
            raise
        return False
    return run.info.lifecycle_stage == "active"


def unreachable_message(err: BaseException, stage: str) -> str:
    """What a user needs after a stage lost the tracking server."""
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    return (
        f"the MLflow tracking server {tracking_uri()} is "
        f"unreachable (gave up after {retries} retries; MLFLOW_HTTP_REQUEST_MAX_RETRIES, "
        f"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR and MLFLOW_HTTP_REQUEST_TIMEOUT bound them). "
        f"The {stage} stage stopped without publishing anything: no model version was left "
        "half-registered and its previous outputs are unchanged. Rerun when the server is back; "
        "training resumes from its last epoch checkpoint. Cause: "
        f"{_first_line(err)}"
    )


def tracking_error(
    err: BaseException, stage: str
) -> AccessDeniedError | TrackingRejectedError | TrackingUnavailableError | None:
    """The project's error for a failure of the tracking store (``err`` or what caused it), or
    None when it is not one. Unreachable or a server error are worth a rerun later (exit 4);
    missing or wrong credentials (401) and a role without the permission (403) need the
    credentials or the grants changed (exit 7); a request the store rejects as invalid (a bad or
    conflicting name, a model, run or experiment that does not exist) needs a changed input
    (exit 2)."""

    if is_tracking_unreachable(err):
        return TrackingUnavailableError(unreachable_message(err, stage))
    found = in_chain(err, MlflowException)
    if found is None:
        return None
    status = found.get_http_status_code()
    where = f"the MLflow tracking store {tracking_uri()}"
    said = f"({found.error_code}): {_first_line(found).removeprefix(found.error_code + ': ')}"
    unchanged = f"The {stage} stage published nothing and its previous outputs are unchanged."
    if status == 401:
        return AccessDeniedError(not_authenticated_message(stage, said))
    if status == 403:
        return AccessDeniedError(
            f"permission denied: {where} does not let {caller()} do what the {stage} stage "
            f"asked {said}. {unchanged} Ask the server's admin for the role it needs (README "
            '"Team registry: users and roles").'
        )
    if 400 <= status < 500 and status != 429:
        return TrackingRejectedError(
            f"{where} rejected the {stage} stage's request as invalid {said}. {unchanged} Check "
            "the names it was given (register.model_name, register.experiment, "
            "mine.hard_negatives_from in params.yaml)."
        )
    return TrackingUnavailableError(
        f"{where} failed the {stage} stage's request {said}. {unchanged} Rerun when the server "
        "is healthy."
    )


def caller() -> str:
    """Who this process is to the tracking server, for messages: the user of
    MLFLOW_TRACKING_USERNAME, a token, or no credentials."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if user:
        return f"user {user!r}"
    return (
        "the token in MLFLOW_TRACKING_TOKEN"
        if os.environ.get("MLFLOW_TRACKING_TOKEN")
        else ("a client without credentials")
    )


def not_authenticated_message(stage: str, said: str = "") -> str:
    """What a user needs after the server answered 401: which credentials it got, and how to set
    the right ones."""
    given = (
        f"the credentials of {caller()} were not accepted"
        if os.environ.get("MLFLOW_TRACKING_USERNAME") or os.environ.get("MLFLOW_TRACKING_TOKEN")
        else "no credentials were given"
    )
    return (
        f"not authenticated: the MLflow tracking server {tracking_uri()} requires a login and "
        f"{given}{f' {said}' if said else ''}. The {stage} stage changed nothing. Set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to "
        "your account on that server, then rerun."
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def ensure_experiment(name: str, project_dir: str | Path = ".") -> str:
    """Experiment id for ``name``. In the project's own store it is created with its artefacts
    in the project's ``mlartifacts/``; elsewhere the server decides. (Asked of the URI, not of
    MLFLOW_TRACKING_URI: the stages export that variable for Lightning's logger, which made
    MLflow fall back to ``./mlruns``.)"""
    uri = tracking_uri(project_dir)
    mlflow_client = client(uri)
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri == project_store_uri(project_dir):
        location = (Path(project_dir).resolve() / DEFAULT_ARTIFACTS).as_uri()
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        exp = mlflow_client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def git_info(project_dir: str | Path = ".") -> dict[str, str]:
    """The code a run trained with: ``git_commit`` and ``git_dirty`` (what the registry versions
    carry), plus MLflow's own ``mlflow.source.*`` tags (commit, branch, remote URL where known),
    which the MLflow UI shows in its Source column and on the run page."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=project_dir, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = str(bool(git("status", "--porcelain", "--untracked-files=no"))).lower()
    tags = {
        "git_commit": commit,
        "git_dirty": dirty,
        mlflow_tags.MLFLOW_SOURCE_TYPE: "LOCAL",
        mlflow_tags.MLFLOW_SOURCE_NAME: SOURCE_NAME,
    }
    if commit != "unknown":
        tags[mlflow_tags.MLFLOW_GIT_COMMIT] = commit
        tags[mlflow_tags.MLFLOW_GIT_DIRTY] = dirty
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":  # "HEAD": a detached checkout has no branch
        tags[mlflow_tags.MLFLOW_GIT_BRANCH] = branch
    remote = git("config", "--get", "remote.origin.url")
    if remote:
        tags[mlflow_tags.MLFLOW_GIT_REPO_URL] = remote
    return tags


def dvc_dir_hash(path: str | Path) -> str:
    """DVC's own hash of a directory (``<md5>.dir``, what dvc.lock records for it), computed from
    the files themselves so it is right even when dvc.lock is stale (a stage run by hand)."""
    from dvc_data.hashfile.tree import Tree

    root = Path(path)
    entries = [
        {"md5": file_md5(f), "relpath": f.relative_to(root).as_posix()}
        for f in sorted(root.rglob("*"))
        if f.is_file()
    ]
    tree = Tree.from_list(entries, hash_name="md5")
    tree.digest()
    return tree.hash_info.value


@contextlib.contextmanager
def active_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` for a block only. ``mlflow.set_tracking_uri`` also
    exports MLFLOW_TRACKING_URI, which would leak into every later stage of this process."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
