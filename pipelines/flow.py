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

import codecs
import collections
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from prefect import flow, get_run_logger, serve, task
from prefect.runtime import flow_run
from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType

from pipelines.summary import format_summary  # noqa: F401 (re-exported: the CLI and tests)
from pipelines.uptodate import NO_REMOTE, PUSH_MARKER, lock_digest
from siamese import paths
from siamese.config import apply_overrides, load_params, read_params_file, validate_params
from siamese.errors import (
    EXIT_ACCESS_DENIED,
    EXIT_FAILED,
    EXIT_PROMOTION_REFUSED,
    EXIT_UNREACHABLE,
    StageFailed,
)
from siamese.locking import project_lock
from siamese.output import PROGRESS_ENV, progress_wanted, verbose
from siamese.params_file import set_params
from siamese.registry.names import check_tracking_names
from siamese.training.settings import check_trainer

STAGES = ("prepare", "mine", "train", "calibrate", "evaluate", "register")
# a retry helps only where a failure can be transient (a tracking server, a remote)
STAGE_RETRIES = {"register": 2}
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


# DVC's reminders after every stage, which `siamese run` acts on itself or which concern the
# user's git history, not this run: "To track the changes with git, run: git add dvc.lock ...",
# "To enable auto staging, run: dvc config core.autostage true", "Use `dvc push` to send your
# updates to remote storage" (the flow pushes). Shown with --verbose.
_DVC_HINTS = re.compile(
    r"^(To track the changes with git, run:|To enable auto staging, run:|git add |"
    r"dvc config core\.autostage true|Use `dvc push` to send your updates)"
)
_KEPT_LINES = 400  # of a step's output, for its error message (the first lines are kept too)


class _LiveOutput:
    """A step process's output (stdout and stderr merged), forwarded as it arrives: each line to
    the Prefect run logger (the terminal and the Prefect UI), a progress bar's redraws (text
    redrawn after a carriage return, no newline yet) to the terminal only, and only when it is
    one. Keeps the first and last lines for the step's error message."""

    def __init__(self, label: str, logger, quiet_failure: bool = False, terminal=None):
        self.label = label
        self.logger = logger
        self.quiet_failure = quiet_failure
        self.terminal = terminal  # where progress bars are drawn: a terminal, or None
        self.drawn = False  # a progress bar is on the terminal's current line
        self.partial = ""  # output after the last complete line
        self.head: list[str] = []
        self.tail: collections.deque[str] = collections.deque(maxlen=_KEPT_LINES)
        self.dropped = 0

    def feed(self, text: str) -> None:
        """Complete lines of ``text`` (what a terminal shows of each: the text after its last
        carriage return)."""
        *lines, self.partial = (self.partial + text).split("\n")
        for raw in lines:
            self._line(raw.rstrip("\r").rsplit("\r", 1)[-1])
        if "\r" in self.partial:  # a progress bar redrawn in place: keep only its last state
            shown = [seg for seg in self.partial.split("\r") if seg.strip()]
            # what follows the last carriage return starts the line's next text (after a bar
            # was cleared, the next log line), even while still empty
            self.partial = "\r" + self.partial.rsplit("\r", 1)[-1]
            if self.terminal and shown:
                self.terminal.write("\r\033[K" + shown[-1])
                self.terminal.flush()
                self.drawn = True

    def close(self) -> str:
        if self.partial.strip():
            self._line(self.partial.rsplit("\r", 1)[-1])
        self._clear_bar()
        kept = self.head + ([f"... ({self.dropped} lines left out)"] if self.dropped else [])
        return "\n".join(kept + list(self.tail))

    def _clear_bar(self) -> None:
        if self.drawn and self.terminal:
            self.terminal.write("\r\033[K")
            self.terminal.flush()
        self.drawn = False

    def _line(self, line: str) -> None:
        if len(self.head) < 20:
            self.head.append(line)
        else:
            if len(self.tail) == self.tail.maxlen:
                self.dropped += 1
            self.tail.append(line)
        text = line.strip()
        if not text or (not verbose() and _DVC_HINTS.match(text)):
            return
        # under `siamese run` a failure is reported once, by the CLI (its one `error:` line)
        if self.quiet_failure and text.startswith(("error: ", "ERROR: ")):
            return
        self._clear_bar()
        self.logger.info("%s | %s", self.label, line.rstrip())


def _run_live(cmd: list[str], project: Path, label: str, env: dict | None = None):
    """Run ``cmd`` in the project, its output forwarded line by line while it runs
    (``_LiveOutput``); the finished process with the kept output as its stdout. The process is
    told whether to draw progress bars (``SIAMESE_PROGRESS``: whether this process writes to a
    terminal, unless the user set it) and to write unbuffered, so lines arrive as written."""
    env = {**_env(), "PYTHONUNBUFFERED": "1", **(env or {})}
    env.setdefault(PROGRESS_ENV, "1" if progress_wanted() else "0")
    terminal = sys.stderr if sys.stderr.isatty() else None
    out = _LiveOutput(label, get_run_logger(), _QUIET, terminal)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with subprocess.Popen(
        cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as proc:
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read1(65536):
                out.feed(decoder.decode(chunk))
        except BaseException:  # as subprocess.run: an interrupted flow leaves no step running
            proc.kill()
            raise
        out.feed(decoder.decode(b"", final=True))
        returncode = proc.wait()
    return subprocess.CompletedProcess(cmd, returncode, out.close(), "")


@task(name="dvc-status")
def stale_stages(project_dir: str) -> list[str]:
    """Stages DVC considers changed (deps, params, outs or never run)."""
    proc = _dvc(Path(project_dir), "status", "--json")
    if proc.returncode != 0:
        raise _failure("dvc status", proc)
    status = json.loads(proc.stdout or "{}")
    return [name.split(":")[-1] for name in status if not name.endswith(".dvc")]


@task(name="data-provenance")
def check_data_source(project_dir: str, source: str, max_file_bytes: int) -> dict:
    """``data.source`` against DVC before any stage runs (siamese.stages.provenance): a stale DVC
    record fails the run (``DatasetError``), an unversioned source is warned about on every run,
    and a source outside ``data/`` whose content differs from what prepare last read makes
    prepare re-run (DVC cannot see it). Returns ``data`` (a line for the summary), ``warning``
    and ``changed`` (the unwatched source changed since prepare read it)."""
    from siamese.stages.provenance import changed_since_prepared, source_state

    project = Path(project_dir)
    state = source_state(source, project, max_file_bytes)
    if state.warning:
        get_run_logger().warning("%s", state.warning)
    changed = changed_since_prepared(state, project / paths.PREPARED)
    if changed:
        get_run_logger().info(
            "data.source %s changed since prepare last read it: re-running prepare", source
        )
    return {"data": state.describe(), "warning": state.warning, "changed": changed}


_DVC_EXIT = re.compile(r"failed to run: .*, exited with (-?\d+)")
_QUIET = False  # set by quiet_failure_tracebacks: a failed stage's error lines are not logged


def _failure(
    step: str,
    proc: subprocess.CompletedProcess,
    kind: type[StageFailed] = StageFailed,
    name: str | None = None,
) -> StageFailed:
    """The StageFailed for a step process that failed: its own ``error: ...`` line (a stage
    prints exactly one, siamese.cli) or else DVC's last ``ERROR:`` line or first line, and the
    stage's exit code, which DVC reports as ``exited with N`` (a signal: 128 + its number)."""
    output = (proc.stdout or "") + (proc.stderr or "")
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    ours = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    theirs = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR: ")]
    # else DVC's own failure (its summary line comes first, the details after it)
    message = (ours[-1:] or theirs[-1:] or lines[:1] or [f"exit {proc.returncode}"])[0]
    if name:  # the stage names itself; the step already says which it is
        message = message.removeprefix(f"{name}: ")
    found = _DVC_EXIT.findall(output)
    code = int(found[-1]) if found else proc.returncode
    if code < 0:  # killed by a signal
        code = 128 - code
    return kind(step, message, code or EXIT_FAILED, output)


@task(name="stage")
def repro_stage(project_dir: str, stage: str, force: bool = False) -> str:
    """``dvc repro --single-item STAGE``: runs the stage only if DVC finds it changed
    (``force``: in any case, for a change DVC cannot see). A failed stage leaves its previous
    outputs in place (``persist: true`` in dvc.yaml: DVC does not delete them first, and every
    stage replaces its outputs atomically once it succeeded)."""
    args = ["repro", "--single-item", *(["--force"] if force else []), stage]
    env = {"SIAMESE_REGISTER_FORCE": "1"} if force and stage == "register" else None
    cmd = [sys.executable, "-m", "dvc", *args]
    proc = _run_live(cmd, Path(project_dir), stage, env)
    if proc.returncode != 0:
        raise _failure(f"stage {stage!r}", proc, name=stage)
    return "skipped" if "didn't change, skipping" in proc.stdout else "ran"


def _retry_if_transient(task, task_run, state) -> bool:
    """Retry a stage only when what stopped it may pass by itself (the tracking server was
    unreachable); bad input, a numerical fault or a full disk fail the same way again."""
    try:
        state.result()
    except StageFailed as err:
        return err.exit_code == EXIT_UNREACHABLE
    except Exception:
        return True
    return False


@contextlib.contextmanager
def quiet_failure_tracebacks(enabled: bool = True) -> Iterator[None]:
    """While enabled, Prefect's console leaves out the records that carry a failed task's or
    flow's traceback (its "Finished in state Failed(...)" line stays), and a stage's own
    ``error:`` line and DVC's ``ERROR:`` lines are not forwarded: the caller reports the failure
    once (``siamese run`` prints one ``error:``
    line; ``--verbose`` shows everything). The Prefect API (the UI) still receives the
    tracebacks: only the console handlers are filtered."""
    global _QUIET
    if not enabled:
        yield
        return

    class _NoTraceback(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not (record.name.startswith("prefect") and record.exc_info)

    filt = _NoTraceback()
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    for h in handlers:
        h.addFilter(filt)
    _QUIET = True
    try:
        yield
    finally:
        _QUIET = False
        for h in handlers:
            h.removeFilter(filt)


@task(name="dvc-push", retries=2, retry_delay_seconds=3)
def push_outputs(project_dir: str) -> str:
    """Push data and outputs so a registered version's inputs can be pulled back. A marker holds
    the digest of what was last pushed, so a no-change rerun does not pay for a remote check."""
    project = Path(project_dir)
    digest = lock_digest(project)
    marker = project / PUSH_MARKER
    if marker.is_file() and marker.read_text() == digest:
        return "already pushed"
    proc = _dvc(project, "push")
    output = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0:
        if "no remote specified" in output.lower():
            get_run_logger().warning("no DVC remote configured; skipping push")
            marker.parent.mkdir(parents=True, exist_ok=True)  # a no-change run need not ask again
            marker.write_text(f"{digest}\n{NO_REMOTE}")
            return NO_REMOTE
        raise _failure("dvc push", proc)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(digest)
    lines = (proc.stdout or "").strip().splitlines()
    return lines[-1] if lines else ""


class PromotionRefused(StageFailed):
    """Not retried: a challenger without a (successful) evaluation stays unpromoted."""


@task(name="promote", retries=PROMOTE_RETRIES, retry_delay_seconds=5)
def promote_task(project_dir: str, version: str | None = None) -> dict:
    """``siamese promote`` in the project (its own process, like the DVC stages)."""
    project = Path(project_dir)
    cmd = [sys.executable, "-m", "siamese", "promote"]
    if version:
        cmd += ["--version", str(version)]
    proc = _run_live(cmd, project, "promote")
    if proc.returncode == EXIT_PROMOTION_REFUSED:  # the challenger's evaluation is missing/failed
        raise _failure("promote", proc, PromotionRefused)
    if proc.returncode != 0:
        raise _failure("promote", proc)
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
    except StageFailed as err:  # refused credentials or role: a retry gets the same answer
        return err.exit_code != EXIT_ACCESS_DENIED
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
    # validate (and apply overrides to params.yaml) before any stage runs, the trainer settings
    # as Lightning takes them here (a scheduled run does not pass through `siamese run`)
    raw = apply_overrides(read_params_file(params_path), list(overrides or []))
    params = validate_params(raw, str(params_path))
    check_tracking_names(params, str(params_path))
    check_trainer(params, str(params_path))
    source = check_data_source(str(project), params.data.source, params.data.max_file_bytes)
    if overrides:  # only once all of it is valid: a refused run leaves params.yaml as it was
        set_params(params_path, list(overrides))
    # dvc.lock cannot see the registry: a lost training run or version re-registers the exported
    # model (register --force) instead of being skipped as done (imported here: MLflow is slow
    # to import, and `siamese deploy` imports this module without running it)
    from siamese.registry.versions import registry_gaps

    gaps = registry_gaps(params.register.model_name, project)
    for gap in gaps:
        get_run_logger().warning("%s: re-registering (siamese register --force)", gap)
    stale = set(stale_stages(str(project)))
    if source["changed"]:
        stale.add("prepare")
    statuses: dict[str, str] = {}
    upstream_changed = False
    for stage in STAGES:
        # a change DVC cannot see: a registry that lacks what dvc.lock says is done, a source
        # outside data/ that changed since prepare read it
        force = (bool(gaps) and stage == "register") or (stage == "prepare" and source["changed"])
        if upstream_changed or stage in stale or force:
            run = repro_stage.with_options(
                name=f"stage-{stage}",
                retries=STAGE_RETRIES.get(stage, 0),
                retry_delay_seconds=5,
                retry_condition_fn=_retry_if_transient,
            )
            statuses[stage] = run(str(project), stage, force=force)
            upstream_changed = upstream_changed or statuses[stage] == "ran"
        else:
            statuses[stage] = "skipped"
    pushed = push_outputs(str(project)) if push else "disabled"
    registration = json.loads((project / paths.REGISTRATION / "registration.json").read_text())
    return {
        "stages": statuses,
        "data": source["data"],
        "data_warning": source["warning"],
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
