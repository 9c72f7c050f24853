"""register: log the pyfunc model into the training run and register a version as
``challenger``. Whether it becomes ``champion`` is the promote stage's decision
(siamese.stages.promote), taken on the benchmark pairs against the current champion.

A failure after the version exists deletes that version again (and gives the challenger alias
back to the previous challenger), so the registry never holds half a registration."""

from __future__ import annotations

import logging
from pathlib import Path

from siamese.config import Params
from siamese.io import atomic_dir, read_json, write_json
from siamese.registry import tracking
from siamese.registry.aliases import (
    CHALLENGER,
    PREVIOUS_CHALLENGER_TAG,
    REGISTRATION_TAG,
    alias_version,
)
from siamese.registry.names import check_tracking_names
from siamese.registry.registration import (
    ensure_registered_model,
    log_model,
    log_run_results,
    remove_unfinished_versions,
)
from siamese.registry.tracking import active_tracking_uri, tracking_uri

log = logging.getLogger(__name__)


def run_register(
    params: Params,
    prepared_dir: str | Path,
    pairs_dir: str | Path,
    model_dir: str | Path,
    calibration_dir: str | Path,
    eval_dir: str | Path,
    out_dir: str | Path,
) -> dict:
    check_tracking_names(params)  # before any registry write
    model_dir, eval_dir = Path(model_dir), Path(eval_dir)
    uri = tracking_uri()
    client = tracking.client(uri)
    name = params.register.model_name
    run_id = read_json(model_dir / "run.json")["run_id"]
    calibration_path = Path(calibration_dir) / "calibration.json"
    calibration = read_json(calibration_path)
    test = read_json(eval_dir / "metrics.json")

    removed = remove_unfinished_versions(client, name, run_id)
    log_run_results(client, run_id, calibration, test, eval_dir)
    with active_tracking_uri(uri):
        model_uri = log_model(run_id, model_dir, calibration_path, params.serve)
    ensure_registered_model(client, name)
    previous_challenger = alias_version(client, name, CHALLENGER)
    run = client.get_run(run_id)
    version_tags = {
        "git_commit": run.data.tags.get("git_commit", "unknown"),
        "test.roc_auc": f"{test['roc_auc']:.6f}",
        "calibration.threshold": f"{calibration['threshold']:.6f}",
        **{k: v for k, v in run.data.tags.items() if k.startswith(("data.", "dvc."))},
        REGISTRATION_TAG: "pending",
    }
    if previous_challenger is not None:
        version_tags[PREVIOUS_CHALLENGER_TAG] = previous_challenger
    # the version is created last; anything failing after it removes it again
    # a tracking server checks that a models:/<model id> source names its logged model
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    mv = client.create_model_version(
        name, model_uri, run_id=run_id, tags=version_tags, model_id=model_id
    )
    try:
        client.set_registered_model_alias(name, CHALLENGER, mv.version)
        log.info(
            "alias %s of %s: %s -> v%s (registered)",
            CHALLENGER,
            name,
            f"v{previous_challenger}" if previous_challenger else "none",
            mv.version,
        )
        # the last registry write: from here on the version is whole
        client.set_model_version_tag(name, mv.version, REGISTRATION_TAG, "complete")
        result = {
            "model_name": name,
            "version": str(mv.version),
            "aliases": [CHALLENGER],
            "run_id": run_id,
            "experiment_id": run.info.experiment_id,
            "model_uri": f"models:/{name}/{mv.version}",
            "previous_challenger": previous_challenger,
            "test": test,
            "threshold": calibration["threshold"],
            "tracking_uri": uri,
            "removed_unfinished_versions": removed,
        }
        with atomic_dir(out_dir) as tmp_out:
            write_json(tmp_out / "registration.json", result)
    except BaseException as err:
        log.error("registration failed after creating %s v%s; deleting it", name, mv.version)
        try:
            client.delete_model_version(name, mv.version)
            if previous_challenger is not None:
                client.set_registered_model_alias(name, CHALLENGER, previous_challenger)
        except Exception as cleanup_err:
            # the server is gone: the version stays tagged pending, promote refuses it, and the
            # next register of this run deletes it
            log.error(
                "could not delete %s v%s (%s); it stays marked %s=pending and the next register "
                "run removes it",
                name,
                mv.version,
                cleanup_err,
                REGISTRATION_TAG,
            )
            raise err from None
        raise
    return result
