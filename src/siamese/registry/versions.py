"""The registry's versions as a command needs them: looked up by number (naming the versions that
do exist when one does not), found by the digest of the model they serve, and checked for their
model files in the artifact store. Each failure is a ``RegistryStateError`` whose message names
the version and the command that repairs it, so no command has to guess from an MLflow error.
``registry_gaps`` compares the project's exported outputs with the registry for ``siamese run``
(this module stays free of Lightning, so the flow imports it cheaply)."""

from __future__ import annotations

import logging
import posixpath
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from siamese import paths
from siamese.errors import RegistryStateError
from siamese.io import read_json
from siamese.registry.aliases import (
    CHALLENGER,
    CHAMPION,
    REGISTRATION_TAG,
    evaluation_problem,
    version_by_alias,
)
from siamese.registry.tracking import client as tracking_client
from siamese.registry.tracking import is_tracking_unreachable, run_exists, tracking_uri

log = logging.getLogger(__name__)
RUN_FILE = "run.json"  # in artifacts/train, written by the train stage: the run that trained it
# the digests of a version (siamese.registry.package): its model (weights, architecture,
# preprocessing, calibration), and everything it serves (the model, its code and requirements)
MODEL_DIGEST_TAG = "siamese.model_sha256"
PACKAGE_DIGEST_TAG = "siamese.package_sha256"
# the files a served version cannot load without (see siamese.registry.package.build_package)
REQUIRED_FILES = (
    "MLmodel",
    "artifacts/encoder/model.safetensors",
    "artifacts/encoder/model.json",
    "artifacts/preprocessing.json",
    "artifacts/calibration.json",
)


def all_versions(client, name: str) -> list:
    """Every version of the registered model ``name``, oldest first (none when unregistered)."""
    try:
        found = client.search_model_versions(f"name='{name}'")
    except MlflowException as err:
        if is_tracking_unreachable(err):
            raise
        return []
    return sorted(found, key=lambda mv: int(mv.version))


def describe_versions(client, name: str) -> str:
    """``1 (champion), 2 (challenger)`` or ``none``: what an error lists as the choices."""
    try:  # search results carry no aliases; the registered model has them all
        aliases = client.get_registered_model(name).aliases or {}
    except MlflowException as err:
        if is_tracking_unreachable(err):
            raise
        aliases = {}
    held: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        held.setdefault(str(version), []).append(alias)
    out = [
        f"{mv.version} ({', '.join(sorted(held[str(mv.version)]))})"
        if str(mv.version) in held
        else str(mv.version)
        for mv in all_versions(client, name)
    ]
    return ", ".join(out) or "none"


def get_version(client, name: str, version: str | int):
    """The version, or a ``RegistryStateError`` naming the versions that exist."""
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as err:
        if is_tracking_unreachable(err):
            raise
    raise RegistryStateError(
        f"model {name} has no version {version}; versions: {describe_versions(client, name)}"
    )


def versions_with(client, name: str, tag: str, digest: str) -> list:
    """The completely registered versions tagged ``tag=digest``, oldest first."""
    return [
        mv
        for mv in all_versions(client, name)
        if (mv.tags or {}).get(tag) == digest
        and (mv.tags or {}).get(REGISTRATION_TAG, "complete") == "complete"
    ]


def _download_uri(client, name: str, version: str | int) -> str | None:
    try:
        return client.get_model_version_download_uri(name, str(version))
    except MlflowException as err:
        if is_tracking_unreachable(err):
            raise
        return None


def missing_files(client, name: str, version: str | int, tracking_uri: str) -> list[str]:
    """The required model files the version's artifact location lacks (empty: all present)."""
    root = _download_uri(client, name, version)
    if root is None:  # the logged model it was registered from is gone altogether
        return list(REQUIRED_FILES)
    listed: dict[str, set[str]] = {}
    missing = []
    for path in REQUIRED_FILES:
        folder, base = posixpath.split(path)
        if folder not in listed:
            uri = f"{root.rstrip('/')}/{folder}" if folder else root
            try:
                infos = mlflow.artifacts.list_artifacts(artifact_uri=uri, tracking_uri=tracking_uri)
            except MlflowException as err:
                if is_tracking_unreachable(err):
                    raise
                infos = []
            except OSError:  # an artifact root that is gone altogether
                infos = []
            listed[folder] = {posixpath.basename(i.path) for i in infos if not i.is_dir}
        if base not in listed[folder]:
            missing.append(path)
    return missing


def files_missing_message(client, name: str, mv, missing: list[str], tracking_uri: str) -> str:
    """Which version lost which files, where, and what repairs it."""
    root = _download_uri(client, name, mv.version) or mv.source
    aliases = f" (alias {', '.join(sorted(mv.aliases))})" if mv.aliases else ""
    tags = mv.tags or {}
    lost = "all its model files are" if len(missing) == len(REQUIRED_FILES) else "model files are"
    commit = tags.get("git_commit", "unknown")
    repair = (
        "`siamese register --force` uploads them again from artifacts/train when it holds this "
        "version's model"
    )
    if commit != "unknown":
        repair += f" (`git checkout {commit} && dvc pull` brings that training back)"
    previous = tags.get("previous_champion")
    if CHAMPION in (mv.aliases or []) and previous:
        repair += f"; or `siamese rollback` makes v{previous} the {CHAMPION} again"
    return (
        f"model {name} version {mv.version}{aliases} cannot be loaded: {lost} missing from the "
        f"artifact store ({', '.join(missing)} not under {root}). Repair: {repair}"
    )


def require_files(client, name: str, mv, tracking_uri: str) -> None:
    """Raise a ``RegistryStateError`` naming the repair when the version's files are missing."""
    missing = missing_files(client, name, mv.version, tracking_uri)
    if missing:
        raise RegistryStateError(files_missing_message(client, name, mv, missing, tracking_uri))


def registry_gaps(model_name: str, project_dir: str | Path) -> list[str]:
    """What the registry lacks of the project's finished stages: the training run of
    ``artifacts/train`` and the version ``artifacts/register/registration.json`` names (and its
    model files). DVC cannot see the registry, so ``siamese run`` asks this before it trusts
    dvc.lock; a non-empty answer makes it run ``register --force``. Nothing to say (an
    unfinished pipeline, an unreachable server) is an empty list: the stages report those."""
    project = Path(project_dir)
    uri = tracking_uri(project)
    client = tracking_client(uri)
    gaps = []
    try:
        registered = None  # the registration of registration.json, when the registry has it
        reg_file = project / paths.REGISTRATION / "registration.json"
        if reg_file.is_file():
            registration = read_json(reg_file)
            name, version = model_name, registration.get("version")
            try:
                mv = client.get_model_version(name, str(version))
            except MlflowException as err:
                if is_tracking_unreachable(err):
                    raise
                gaps.append(f"{name} v{version} of {reg_file.relative_to(project)} is not in {uri}")
            else:
                missing = missing_files(client, name, mv.version, uri)
                if missing:
                    gaps.append(f"{name} v{version} lost its model files ({', '.join(missing)})")
                registered = registration
        run_file = project / paths.TRAIN / RUN_FILE
        if run_file.is_file():
            run_id = read_json(run_file)["run_id"]
            # a training whose lost run was re-created by `register --force` is registered
            covered = registered is not None and run_id in (
                registered.get("train_run_id"),
                registered.get("run_id"),
            )
            if not covered and not run_exists(client, run_id):
                gaps.append(f"the MLflow run {run_id} of {paths.TRAIN} is not in {uri}")
    except (OSError, ValueError, KeyError) as err:
        log.warning("could not compare the exported outputs with the registry: %s", err)
        return []
    except Exception as err:
        if not is_tracking_unreachable(err):
            raise
        return []
    return gaps


def settled_promotion(
    client, name: str, metric: str, min_improvement: float, benchmark_md5: str, tracking_uri: str
) -> str | None:
    """The decision ``siamese promote`` would only repeat, or None when it has one to take.

    Mirrors ``siamese.stages.promote.run_promote`` without scoring anything: ``unchanged`` (the
    challenger is the champion), ``skipped`` (the challenger was rolled back), or ``kept`` (it
    lost to this same champion on this same benchmark, metric and minimum improvement, as its
    ``promotion.*`` tags record). A missing challenger, an incomplete evaluation (promote
    refuses it, exit 3) or lost model files are not settled: the full run reports them."""
    chal = version_by_alias(client, name, CHALLENGER)
    if chal is None:
        return None
    champ = version_by_alias(client, name, CHAMPION)
    if evaluation_problem(client, chal, metric) is not None:
        return None
    for mv in (chal, champ):
        if mv is not None and missing_files(client, name, mv.version, tracking_uri):
            return None
    if champ is not None and str(champ.version) == str(chal.version):
        return "unchanged"
    tags = chal.tags or {}
    if tags.get("rolled_back_at"):
        return "skipped"
    recorded = {
        "promotion.decision": "kept",
        "promotion.champion_version": str(champ.version) if champ else "none",
        "promotion.metric": metric,
        "promotion.min_improvement": f"{min_improvement:g}",
        "promotion.benchmark_md5": benchmark_md5,
    }
    if champ is not None and all(tags.get(k) == v for k, v in recorded.items()):
        return "kept"
    return None
