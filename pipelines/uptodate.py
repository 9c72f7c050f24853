"""Whether ``siamese run`` has anything to do, answered without Prefect or Lightning.

A no-change run used to validate the trainer settings with Lightning (~5 s to import) and start
the Prefect flow (an ephemeral API server) only to find every stage skipped. ``siamese run`` now
asks this module first, holding the project lock, and prints the summary itself when

* ``dvc status`` finds no stage (or data record) changed;
* ``data.source`` is not newer than what prepare read (siamese.stages.provenance), and a source
  under a DVC record matches it (checked before, by the CLI);
* the registry lacks nothing the finished stages recorded (``registry_gaps``: the training run,
  the registered version and its files; otherwise ``register --force`` must run);
* promotion has nothing to decide (``settled_promotion``: the challenger already is the champion,
  was rolled back, or already lost to this champion on this benchmark);
* what dvc.lock and the data records name was pushed (``PUSH_MARKER``), or there is no remote.

Anything else, or any doubt (a check that fails), runs the flow as before, which repeats every
check: this module only decides that nothing needs starting. ``dvc status`` runs in its own
process from the start (``dvc_status``), while this process imports and validates the params.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

from siamese import paths

log = logging.getLogger(__name__)
PUSH_MARKER = Path(".dvc") / "tmp" / "siamese-pushed"
NO_REMOTE = "no remote"  # the marker's second line when the flow found no remote to push to
# params.yaml as last validated (its digest and the code that validated it) and the values a
# no-change check reads: validating imports torch (~2 s, the components' registries), which a
# run that starts nothing need not pay while params.yaml and the code are those it validated
VALIDATED = Path(".dvc") / "tmp" / "siamese-validated.json"
# the last settled registry answer, with the state of the project's store and model files: a
# no-change run need not load MLflow (~3 s) to find the same answer in an untouched store
REGISTRY_SEEN = Path(".dvc") / "tmp" / "siamese-registry.json"
BENCHMARK = paths.PAIRS / "test.npz"  # the promotion benchmark (siamese.stages.promote)


def run_facts(params) -> dict:
    """What the no-change check needs of the validated params."""
    from siamese.registry.promotion import metric_key

    return {
        "source": params.data.source,
        "max_file_bytes": params.data.max_file_bytes,
        "model_name": params.register.model_name,
        "metric": metric_key(params),
        "min_improvement": params.register.min_improvement,
    }


def _validated_digest(params_bytes: bytes) -> str:
    """params.yaml's bytes with every source file of the installed siamese package and the
    versions of the libraries whose rules the validation asks (pydantic, MLflow's names)."""
    import importlib.metadata

    import siamese

    digest = hashlib.sha256(params_bytes)
    for f in sorted(Path(siamese.__file__).parent.rglob("*.py")):
        digest.update(f.read_bytes())
    for dist in ("pydantic", "mlflow"):
        digest.update(importlib.metadata.version(dist).encode())
    return digest.hexdigest()


def remember_valid(project: Path, params_bytes: bytes, facts: dict) -> None:
    """Record that params.yaml as ``params_bytes`` passed validation (best effort)."""
    try:
        record = {"digest": _validated_digest(params_bytes), "facts": facts}
        path = project / VALIDATED
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    except OSError as err:
        log.debug("could not record the validated params: %s", err)


def known_valid(project: Path, params_bytes: bytes) -> dict | None:
    """The facts of params.yaml when these exact bytes passed validation with this code."""
    try:
        record = json.loads((project / VALIDATED).read_text())
        return record["facts"] if record["digest"] == _validated_digest(params_bytes) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def lock_digest(project: Path) -> str:
    """What a push sends, in one digest: dvc.lock, the data records under ``data/`` and the DVC
    config (a remote added later changes it, so the next run pushes)."""
    files = [project / "dvc.lock", project / ".dvc" / "config", project / ".dvc" / "config.local"]
    if (project / "data").is_dir():
        files += sorted((project / "data").rglob("*.dvc"))
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes() if f.is_file() else b"")
    return digest.hexdigest()


def pushed(project: Path) -> str | None:
    """``already pushed`` or ``no remote`` when the last push (or the lack of a remote) was for
    the current digest; None when a push has something to send."""
    marker = project / PUSH_MARKER
    if not marker.is_file():
        return None
    digest, _, note = marker.read_text().partition("\n")
    if digest != lock_digest(project):
        return None
    return NO_REMOTE if note == NO_REMOTE else "already pushed"


class _Status:
    """``dvc status --json`` started in its own process; ``stale()`` waits for its answer."""

    def __init__(self, project: Path) -> None:
        self.lock_file = project / "dvc.lock"
        self.lock_state = _file_state(self.lock_file)
        self._answer: tuple[str, str] | None = None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dvc", "status", "--json"],
            cwd=project,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stale(self) -> list[str] | None:
        """What DVC finds changed (stages, data records); None when it could not tell, or when
        dvc.lock changed while it ran. Waits for it (again: the answer is kept)."""
        if self._answer is None:
            self._answer = self.proc.communicate()
        out, err = self._answer
        if self.proc.returncode != 0:
            log.debug("dvc status failed: %s", err)
            return None
        if _file_state(self.lock_file) != self.lock_state:  # `dvc repro` by hand meanwhile
            return None
        try:
            return list(json.loads(out or "{}"))
        except json.JSONDecodeError:
            return None


def _file_state(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


@contextlib.contextmanager
def dvc_status(project: Path) -> Iterator[_Status]:
    """``dvc status`` running while the block runs (stopped if the block leaves unanswered)."""
    status = _Status(project)
    try:
        yield status
    finally:
        if status.proc.poll() is None:
            status.proc.terminate()
            status.proc.wait()


def nothing_to_do(project: Path, facts: dict, push: bool, status: _Status) -> dict | None:
    """The summary of a run with nothing to do (every stage skipped, nothing registered,
    pushed or promoted), or None when the flow must run. Call it holding the project lock."""
    try:
        return _nothing_to_do(project, facts, push, status)
    except Exception as err:  # any doubt: the flow checks again and reports it properly
        log.debug("running the flow: the no-change check failed (%s)", err)
        return None


def _nothing_to_do(project: Path, facts: dict, push: bool, status: _Status) -> dict | None:
    reg_file = project / paths.REGISTRATION / "registration.json"
    stale = status.stale()
    if stale is None or stale or not reg_file.is_file():
        return None
    push_state = pushed(project) if push else "disabled"
    if push_state is None:
        return None
    from siamese.stages.provenance import changed_since_prepared, source_state

    source = source_state(facts["source"], project, facts["max_file_bytes"])
    if changed_since_prepared(source, project / paths.PREPARED):
        return None
    from siamese.io import file_md5, read_json

    registration = read_json(reg_file)
    key = {**facts, "registration": registration, "benchmark": file_md5(project / BENCHMARK)}
    seen = _seen_settled(project, key)
    if seen is not None:  # the project's store and model files are as when last found settled
        decision, champion = seen
    else:  # the registry, which DVC cannot see (MLflow loads only after DVC found nothing)
        found = _registry_settled(project, key)
        if found is None:
            return None
        decision, champion = found
    promotion = _promotion_line(decision, registration, champion)
    if source.warning:
        log.warning("%s", source.warning)
    stages = list(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])
    return {
        "stages": dict.fromkeys(stages, "skipped"),
        "data": source.describe(),
        "data_warning": source.warning,
        "registration": registration,
        "promotion": promotion,
        "push": push_state,
        "flow_run_id": None,
        "project_dir": str(project),
        "up_to_date": (
            "dvc status finds every stage up to date, the registry holds the training run and "
            f"v{registration['version']} with its files, and promotion has nothing to decide "
            f"({decision}); no stage or flow was started"
        ),
    }


def remember_registry(project: Path, facts: dict) -> None:
    """After a run of the flow: record the registry's answer now, so the next no-change run
    need not load MLflow to find it (best effort; MLflow is loaded already)."""
    from siamese.io import file_md5, read_json

    try:
        registration = read_json(project / paths.REGISTRATION / "registration.json")
        key = {**facts, "registration": registration, "benchmark": file_md5(project / BENCHMARK)}
        _registry_settled(project, key)
    except Exception as err:
        log.debug("could not record the registry's answer: %s", err)


def _registry_settled(project: Path, key: dict) -> tuple[str, str | None] | None:
    """Ask the registry: nothing missing (``registry_gaps``) and a settled promotion? Then
    (decision, champion version), remembered with the store's state; else None."""
    from siamese.registry.aliases import CHALLENGER, CHAMPION, alias_version
    from siamese.registry.tracking import client, tracking_uri
    from siamese.registry.versions import registry_gaps, settled_promotion

    name = key["model_name"]
    if registry_gaps(name, project):
        return None
    uri = tracking_uri(project)
    mlflow_client = client(uri)
    decision = settled_promotion(
        mlflow_client, name, key["metric"], key["min_improvement"], key["benchmark"], uri
    )
    if decision is None:
        return None
    champion = alias_version(mlflow_client, name, CHAMPION)
    versions = {str(key["registration"]["version"]), champion}
    versions.add(alias_version(mlflow_client, name, CHALLENGER))
    _remember_settled(project, key, mlflow_client, name, versions - {None}, decision, champion)
    return decision, champion


def _store_file(project: Path) -> Path | None:
    """The project's own SQLite store (siamese.registry.tracking.DEFAULT_DB), or None when
    MLFLOW_TRACKING_URI names another store: a server is always asked."""
    return None if os.environ.get("MLFLOW_TRACKING_URI") else project / "mlflow.db"


def _states(paths_: list[str]) -> list | None:
    states = [_file_state(Path(p)) for p in paths_]
    return None if None in states else states


def _remember_settled(project, key, mlflow_client, name, versions, decision, champion) -> None:
    """Record the settled answer with the state (mtime, size) of the store file and of the
    involved versions' model files, when all of them are local files (best effort)."""
    from urllib.parse import unquote, urlparse

    from siamese.registry.versions import REQUIRED_FILES

    db = _store_file(project)
    if db is None:
        return
    files = [str(db)]
    for version in sorted(versions):
        uri = mlflow_client.get_model_version_download_uri(name, version)
        if not uri.startswith("file://"):
            return
        root = Path(unquote(urlparse(uri).path))
        files += [str(root / f) for f in REQUIRED_FILES]
    states = _states(files)
    if states is None:
        return
    record = {"key": key, "files": files, "states": states, "answer": [decision, champion]}
    try:
        (project / REGISTRY_SEEN).write_text(json.dumps(record))
    except OSError as err:
        log.debug("could not record the registry state: %s", err)


def _seen_settled(project: Path, key: dict) -> tuple[str, str | None] | None:
    """The remembered answer, when the key (params facts, registration, benchmark) is the same
    and the store file and model files are untouched since (any MLflow write changes the
    store file; a lost model file or store is missing)."""
    if _store_file(project) is None:
        return None
    try:
        record = json.loads((project / REGISTRY_SEEN).read_text())
        if record["key"] != json.loads(json.dumps(key)):
            return None
        if str(Path(record["files"][0])) != str(_store_file(project)):
            return None
        states = _states(record["files"])
        if states is None or [list(s) for s in states] != record["states"]:
            return None
        decision, champion = record["answer"]
        return decision, champion
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _promotion_line(decision: str, registration: dict, champion: str | None) -> dict:
    """The promotion as the summary shows it, for a decision promote would only repeat."""
    CHAMPION = "champion"  # noqa: N806 (siamese.registry.aliases.CHAMPION, without MLflow)
    reasons = {
        "unchanged": f"v{registration['version']} already is the {CHAMPION}",
        "kept": f"v{champion} stays {CHAMPION}",
        "skipped": (
            f"v{registration['version']} was rolled back; `siamese promote --version "
            f"{registration['version']}` promotes it"
        ),
    }
    return {
        "decision": decision,
        "promoted": False,
        "champion_version": champion,
        "reason": reasons[decision],
    }
