"""The flows: Prefect runs each stage as a task through DVC, so unchanged stages are skipped,
dvc.lock records what ran, and the same stage commands serve DVC, Prefect and users.

* ``training_flow``: prepare -> mine -> train -> calibrate -> evaluate -> register (DVC stages),
  push, then (by default) ``promotion_flow``.
* ``promotion_flow``: ``siamese promote``: the challenger against the champion on the benchmark
  pairs. Not a DVC stage: its outcome depends on the registry (the current champion, a rollback),
  which DVC cannot see, so it runs every time and is a no-op when nothing changed.
* ``retrain_and_promote``: the scheduled parent flow, training then promotion as two subflows;
  ``retraining_deployment`` / ``serve_retraining`` give it a cron schedule (``siamese deploy``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, serve, task
from prefect.runtime import flow_run
from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType

from siamese import paths
from siamese.config import load_params
from siamese.locking import project_lock
from siamese.params_file import set_params

STAGES = ("prepare", "mine", "train", "calibrate", "evaluate", "register")
# a retry helps only where a failure can be transient (a tracking server, a remote)
STAGE_RETRIES = {"register": 2}
KEPT = "this version did not beat it on the same benchmark pairs"
PROMOTE_RETRIES = 2


def _env() -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def _dvc(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=project,
        env={**_env(), **(env or {})},
        capture_output=True,
        text=True,
    )


def _tail(text: str, n: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


@task(name="dvc-status")
def stale_stages(project_dir: str) -> list[str]:
    """Stages DVC considers changed (deps, params, outs or never run)."""
    proc = _dvc(Path(project_dir), "status", "--json")
    if proc.returncode != 0:
        raise RuntimeError(f"dvc status failed:\n{_tail(proc.stderr or proc.stdout)}")
    status = json.loads(proc.stdout or "{}")
    return [name.split(":")[-1] for name in status if not name.endswith(".dvc")]


@task(name="stage")
def repro_stage(project_dir: str, stage: str, force: bool = False) -> str:
    """``dvc repro --single-item STAGE``: runs the stage only if DVC finds it changed (``force``:
    always, as ``siamese register --force`` for the register stage)."""
    logger = get_run_logger()
    args = ["repro", "--single-item", stage] + (["--force"] if force else [])
    proc = _dvc(Path(project_dir), *args, env={"SIAMESE_REGISTER_FORCE": "1"} if force else None)
    output = (proc.stdout or "") + (proc.stderr or "")
    for line in output.strip().splitlines()[-40:]:
        logger.info("%s | %s", stage, line)
    if proc.returncode != 0:
        raise RuntimeError(
            f"stage {stage!r} failed (dvc repro exit {proc.returncode}):\n{_tail(output)}"
        )
    return "skipped" if "didn't change, skipping" in output else "ran"


PUSH_MARKER = Path(".dvc") / "tmp" / "siamese-pushed"


def _lock_digest(project: Path) -> str:
    lock = project / "dvc.lock"
    data = lock.read_bytes() if lock.is_file() else b""
    tracked = sorted((project / "data").rglob("*.dvc")) if (project / "data").is_dir() else []
    for f in tracked:
        data += f.read_bytes()
    return hashlib.sha256(data).hexdigest()


@task(name="dvc-push", retries=2, retry_delay_seconds=3)
def push_outputs(project_dir: str) -> str:
    """Push data and outputs so a registered version's inputs can be pulled back. A marker holds
    the digest of what was last pushed, so a no-change rerun does not pay for a remote check."""
    project = Path(project_dir)
    digest = _lock_digest(project)
    marker = project / PUSH_MARKER
    if marker.is_file() and marker.read_text() == digest:
        return "already pushed"
    proc = _dvc(project, "push")
    output = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0:
        if "no remote specified" in output.lower():
            get_run_logger().warning("no DVC remote configured; skipping push")
            return "no remote"
        raise RuntimeError(f"dvc push failed:\n{_tail(output)}")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(digest)
    return _tail(proc.stdout, 1)


class PromotionRefused(RuntimeError):
    """Not retried: a challenger without a (successful) evaluation stays unpromoted."""


@task(name="promote", retries=PROMOTE_RETRIES, retry_delay_seconds=5)
def promote_task(project_dir: str, version: str | None = None) -> dict:
    """``siamese promote`` in the project (its own process, like the DVC stages)."""
    logger = get_run_logger()
    project = Path(project_dir)
    cmd = [sys.executable, "-m", "siamese", "promote"]
    if version:
        cmd += ["--version", str(version)]
    proc = subprocess.run(cmd, cwd=project, env=_env(), capture_output=True, text=True)
    output = (proc.stdout or "") + (proc.stderr or "")
    for line in output.strip().splitlines()[-20:]:
        logger.info("promote | %s", line)
    if proc.returncode == 3:  # refused: the challenger's evaluation is missing or failed
        raise PromotionRefused(_tail(output, 3))
    if proc.returncode != 0:
        raise RuntimeError(f"promote failed (exit {proc.returncode}):\n{_tail(output)}")
    return json.loads((project / paths.PROMOTION / "promotion.json").read_text())


@flow(name="siamese-promotion", log_prints=True)
def promotion_flow(
    project_dir: str = ".", version: str | None = None, wait_for_lock: float = 0.0
) -> dict:
    """Promote the challenger (or ``version``) to champion if it beats the champion."""
    project = str(Path(project_dir).resolve())
    run = promote_task.with_options(retry_condition_fn=_retry_unless_refused)
    with project_lock(project, wait_for_lock):
        return run(project, version)


def _retry_unless_refused(task, task_run, state) -> bool:
    try:
        state.result()
    except PromotionRefused:
        return False
    except Exception:
        return True
    return False


@flow(name="siamese-training", log_prints=True)
def training_flow(
    project_dir: str = ".",
    overrides: list[str] | None = None,
    push: bool = True,
    promote: bool = True,
    wait_for_lock: float = 0.0,
) -> dict:
    """prepare -> mine -> train -> calibrate -> evaluate -> register, push to the remote, then
    the promotion flow (``promote=False``: leave that to the caller). One run per project at a
    time: a second one waits ``wait_for_lock`` seconds for the first, then fails, having
    changed nothing (siamese.locking)."""
    project = Path(project_dir).resolve()
    with project_lock(project, wait_for_lock):
        return _training_run(project, overrides, push, promote)


def _training_run(project: Path, overrides: list[str] | None, push: bool, promote: bool) -> dict:
    params_path = project / paths.PARAMS
    # validate (and apply overrides to params.yaml) before any stage runs
    params = set_params(params_path, list(overrides)) if overrides else load_params(params_path)
    # dvc.lock cannot see the registry: a lost training run or version re-registers the exported
    # model (register --force) instead of being skipped as done (imported here: MLflow is slow
    # to import, and `siamese deploy` imports this module without running it)
    from siamese.registry.versions import registry_gaps

    gaps = registry_gaps(params.register.model_name, project)
    for gap in gaps:
        get_run_logger().warning("%s: re-registering (siamese register --force)", gap)
    stale = set(stale_stages(str(project)))
    statuses: dict[str, str] = {}
    upstream_changed = False
    for stage in STAGES:
        force = bool(gaps) and stage == "register"
        if upstream_changed or stage in stale or force:
            run = repro_stage.with_options(
                name=f"stage-{stage}", retries=STAGE_RETRIES.get(stage, 0), retry_delay_seconds=5
            )
            statuses[stage] = run(str(project), stage, force)
            upstream_changed = upstream_changed or statuses[stage] == "ran"
        else:
            statuses[stage] = "skipped"
    pushed = push_outputs(str(project)) if push else "disabled"
    registration = json.loads((project / paths.REGISTRATION / "registration.json").read_text())
    return {
        "stages": statuses,
        "registration": registration,
        "promotion": promotion_flow(str(project)) if promote else None,
        "push": pushed,
        "flow_run_id": str(flow_run.id),
        "project_dir": str(project),
    }


@flow(name="siamese-retrain-and-promote", log_prints=True)
def retrain_and_promote(
    project_dir: str = ".",
    overrides: list[str] | None = None,
    push: bool = True,
    wait_for_lock: float = 0.0,
) -> dict:
    """The scheduled flow: the training flow, then the promotion flow, under one project lock.
    With ``mine.hard_negatives_from: models:/NAME@champion`` the mine stage takes its negatives
    from the current champion, so each retraining works on what the champion confuses."""
    with project_lock(Path(project_dir).resolve(), wait_for_lock):
        summary = training_flow(
            project_dir=project_dir, overrides=overrides, push=push, promote=False
        )
        summary["promotion"] = promotion_flow(summary["project_dir"])
    return summary


def retraining_deployment(
    project_dir: str | Path,
    cron: str | None = None,
    timezone: str | None = None,
    name: str | None = None,
    overrides: list[str] | None = None,
):
    """A RunnerDeployment of ``retrain_and_promote`` on a cron schedule (defaults: ``schedule.*``
    in the project's params.yaml). The entrypoint is the module path, so a runner or worker can
    import it from any working directory where the package is installed."""

    project = Path(project_dir).resolve()
    sched = load_params(project / paths.PARAMS).schedule
    parameters: dict = {"project_dir": str(project)}
    if overrides:
        parameters["overrides"] = list(overrides)
    return retrain_and_promote.to_deployment(
        name=name or sched.deployment,
        schedule=Cron(cron or sched.cron, timezone=timezone or sched.timezone),
        parameters=parameters,
        description=f"retrain and promote {project} on a schedule",
        tags=["siamese", "retraining"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def serve_retraining(deployment, limit: int = 1) -> None:
    """Register the deployment with the Prefect API and run a runner that executes its runs
    (blocks until interrupted; the schedule is paused when it stops)."""

    serve(deployment, limit=limit)


def format_summary(summary: dict) -> str:
    reg = summary["registration"]
    test = reg["test"]
    promo = summary.get("promotion") or {}
    aliases = list(reg["aliases"])
    note = ""
    if promo.get("promoted") or promo.get("decision") == "unchanged":
        aliases.append("champion")
    elif promo.get("decision") == "kept":
        note = f" (champion v{promo['champion_version']} kept: {KEPT})"
    elif promo:
        note = f" (not promoted: {promo.get('reason', promo.get('decision'))})"
    lines = [
        "",
        "== siamese run summary ==",
        "stages: " + ", ".join(f"{k}={v}" for k, v in summary["stages"].items()),
        f"registered model: {reg['model_name']} version {reg['version']} "
        f"aliases: {', '.join(aliases)}" + note,
        f"test pairs: {test['n_pairs']}  ROC AUC {test['roc_auc']:.4f}  EER {test['eer']:.4f}  "
        f"accuracy {test['accuracy']:.4f} at threshold {reg['threshold']:.4f}",
    ]
    tars = [f"TAR@FAR={k.split('_')[-1]} {v:.4f}" for k, v in test.items() if k.startswith("tar_")]
    if tars:
        lines.append("            " + "  ".join(tars))
    uri = reg["tracking_uri"]
    lines += [
        f"MLflow UI:  mlflow ui --backend-store-uri {uri}  ->  "
        f"http://127.0.0.1:5000/#/experiments/{reg['experiment_id']}/runs/{reg['run_id']}",
    ]
    if uri.startswith("http"):
        lines[-1] = f"MLflow UI:  {uri}/#/experiments/{reg['experiment_id']}/runs/{reg['run_id']}"
    api = os.environ.get("PREFECT_API_URL")
    ui = api.removesuffix("/api") if api else "http://127.0.0.1:4200"
    start = "" if api else "prefect server start  ->  "
    lines.append(f"Prefect UI: {start}{ui}/runs/flow-run/{summary['flow_run_id']}")
    lines.append(f"DVC push: {summary['push']}")
    return "\n".join(lines)
