"""The alias rules of the model registry: which aliases exist, how the champion moves and is
recorded, and which versions may be promoted. Shared by the register and promote stages (no stage
imports another)."""

from __future__ import annotations

import json
import logging

from mlflow.exceptions import MlflowException

from siamese.registry.tracking import is_tracking_unreachable

log = logging.getLogger(__name__)
CHALLENGER, CHAMPION = "challenger", "champion"
# "pending" from the moment a version exists until its registration is whole ("complete"); a
# version still pending was interrupted (a lost tracking server, a kill) and is removed by the
# next register of the same run
REGISTRATION_TAG = "siamese.registration"
PREVIOUS_CHALLENGER_TAG = "siamese.previous_challenger"
HISTORY_TAG = "champion_history"
HISTORY_KEEP = 25  # MLflow tag values are limited in length; keep the latest moves


def version_by_alias(client, name: str, alias: str):
    """The version holding ``alias``, or None when no version holds it."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if is_tracking_unreachable(err):  # not knowing is not "no version holds it"
            raise
        return None


def alias_version(client, name: str, alias: str) -> str | None:
    """The version number holding ``alias``, or None."""
    mv = version_by_alias(client, name, alias)
    return None if mv is None else str(mv.version)


def champion_history(client, name: str) -> list[dict]:
    """The latest champion moves recorded on the registered model (oldest first)."""
    raw = client.get_registered_model(name).tags.get(HISTORY_TAG)
    try:
        return json.loads(raw) if raw else []
    except json.JSONDecodeError:
        return []


def move_champion(client, name: str, version: str, entry: dict) -> None:
    """Set the champion alias and append the move to the registered model's history."""
    client.set_registered_model_alias(name, CHAMPION, version)
    history = (champion_history(client, name) + [entry])[-HISTORY_KEEP:]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history, separators=(",", ":")))
    log.info(
        "alias %s of %s: %s -> v%s (%s)",
        CHAMPION,
        name,
        f"v{entry['from']}" if entry.get("from") else "none",
        version,
        entry["action"],
    )


def evaluation_problem(client, mv, key: str) -> str | None:
    """Why the version's evaluation cannot be trusted, or None when it is complete."""
    if not mv.run_id:
        return f"version {mv.version} has no MLflow run, so no evaluation"
    if (mv.tags or {}).get(REGISTRATION_TAG, "complete") != "complete":
        return (
            f"version {mv.version} is an unfinished registration (its register stage was "
            "interrupted); the next register run removes it"
        )
    try:
        run = client.get_run(mv.run_id)
    except MlflowException:
        return f"the run {mv.run_id} of version {mv.version} no longer exists"
    if run.info.status != "FINISHED":
        return f"the run {mv.run_id} of version {mv.version} is {run.info.status}, not FINISHED"
    if f"test.{key}" not in run.data.metrics:
        return (
            f"the run {mv.run_id} of version {mv.version} has no evaluation metric test.{key} "
            "(its evaluation failed or never ran)"
        )
    return None
