"""``siamese sweep``: a grid of parameter values, each point run as a DVC experiment, compared in
one ranked table and in MLflow under one parent run.

* **Grid**: every ``--set KEY=V1,V2,...`` is an axis (the values read as YAML, like ``--set`` of
  ``siamese run``: ``train.margin=0.5,1.0``, ``evaluate.far_targets=[0.01],[0.01,0.001]``); the
  points are their product. A key with one value is fixed for every point. ``--preset NAME``
  applies to every point, before the axes.
* **Checked first**: every point is validated as ``siamese run`` validates params (the params
  schema, the MLflow names, the trainer settings as Lightning takes them here) before anything
  runs; a bad value is a ``ParamsError`` naming the point's values and the key, and nothing runs.
* **DVC experiments**: each point is ``dvc exp run --temp -n NAME -S KEY=VALUE ... evaluate``, one
  after the other. ``--temp`` runs it in a temporary copy of the workspace (the workspace, its
  params.yaml and outputs stay as they were) in this process's environment, which is how each
  point's training learns its parent run. (The ``--queue`` + ``dvc queue start`` route runs the
  points in detached Celery workers, which do not inherit the environment and, offline on a
  loaded machine, were the less reliable of the two.) Stages whose inputs no point changes are
  checked out from the DVC cache in each copy when the workspace has run them (``siamese run``
  first), so a point pays for what it changes. ``dvc exp show`` lists the points afterwards.
* **Stops at evaluate**: a sweep never runs register, so it creates no model version and moves
  neither ``challenger`` nor ``champion``: promotion stays a separate decision. To adopt a point:
  ``dvc exp apply NAME`` then ``siamese run`` (register makes it the challenger, promote decides).
  The ``register``, ``schedule`` and ``serve`` keys cannot be swept: no point would use them.
* **MLflow**: one parent run (``sweep-<dataset>-<N>x-<hash>``) in the experiment the trainings
  log to; each point's train stage creates its run as a child (``mlflow.parentRunId``, passed in
  ``SIAMESE_PARENT_RUN_ID``, siamese.registry.runs), tagged with the point's DVC experiment name.
  After the points ran, each child gets the point's calibration, validation and test metrics
  (what register would log), so the MLflow compare view and ``dvc exp show`` list the same points
  with the same figures.
* **Table**: the points ranked by the promotion metric (``register.promote_metric`` on the test
  pairs, as evaluate reports it), with the validation figure beside it.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from siamese import paths
from siamese.config import (
    Params,
    apply_overrides,
    load_yaml,
    read_params_file,
    validate_params,
)
from siamese.errors import ParamsError, ProjectError
from siamese.evaluation.metrics import RANKING_METRICS
from siamese.locking import project_lock
from siamese.params_file import preset_overrides
from siamese.registry import runs, tracking
from siamese.registry.names import check_tracking_names
from siamese.registry.promotion import metric_key

TARGET = "evaluate"  # the last stage a point runs: never register (promotion stays separate)
NOT_SWEPT = ("register", "schedule", "serve")  # no stage up to TARGET reads them
METRICS_FILE = (paths.EVALUATION / "metrics.json").as_posix()
CALIBRATION_FILE = (paths.CALIBRATION / "calibration.json").as_posix()
# DVC notes about its own temporary copy that a user cannot act on
DVC_NOISE = ("No file hash info found", "untracked files were present", "\tartifacts/")


@dataclass(frozen=True)
class Point:
    """One point of the grid: its 1-based index and the value of each swept key."""

    index: int
    values: dict[str, Any]

    def label(self) -> str:
        return ", ".join(f"{k}={show(v)}" for k, v in self.values.items())

    def overrides(self) -> list[str]:
        """As ``siamese run --set`` overrides (JSON is YAML: the value's type is kept)."""
        return [f"{k}={json.dumps(v)}" for k, v in self.values.items()]


@dataclass
class Outcome:
    """What became of a point: its DVC experiment, its metrics, its MLflow child run."""

    point: Point
    experiment: str
    error: str | None = None
    test: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    run_id: str | None = None
    run_name: str | None = None


@dataclass
class SweepResult:
    metric: str
    lower_is_better: bool
    axes: dict[str, list]
    parent_run_id: str
    parent_run_name: str
    experiment_id: str
    tracking_uri: str
    outcomes: list[Outcome]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error]

    def ranked(self) -> list[Outcome]:
        """Points with the metric, best first; then those without it (failed) in grid order."""
        scored = [o for o in self.outcomes if not o.error and self.metric in o.test]
        sign = 1 if self.lower_is_better else -1
        scored.sort(key=lambda o: (sign * o.test[self.metric], o.point.index))
        return scored + [o for o in self.outcomes if o not in scored]


def show(value: Any) -> str:
    """A value as the user would type it (YAML flow style: 0.5, triplet, [0.01, 0.001])."""
    return json.dumps(value) if not isinstance(value, str) else value


def parse_axes(sets: list[str]) -> dict[str, list]:
    """``KEY=V1,V2,...`` -> {KEY: [V1, V2, ...]}, values read as one YAML flow sequence (so a
    list value keeps its brackets: ``[0.01],[0.01,0.001]``)."""
    axes: dict[str, list] = {}
    for text in sets:
        if "=" not in text:
            raise ParamsError(f"--set {text!r} must look like key.path=value1,value2,...")
        key, rhs = (part.strip() for part in text.split("=", 1))
        if not key or any(not part for part in key.split(".")):
            raise ParamsError(f"--set {text!r} has an empty key")
        if key in axes:
            raise ParamsError(f"--set {key} is given twice: list its values once ({key}=a,b)")
        if key.split(".")[0] in NOT_SWEPT:
            raise ParamsError(
                f"--set {key}: a sweep runs up to the {TARGET} stage and never registers, so "
                f"{key.split('.')[0]}.* would change no point; set it in params.yaml instead"
            )
        values = load_yaml(f"[{rhs}]", f"--set {text!r}", prefix=key) if rhs else None
        if not isinstance(values, list) or not values:
            raise ParamsError(f"--set {text!r} gives no value for {key}")
        if len({json.dumps(v, sort_keys=True) for v in values}) < len(values):
            raise ParamsError(f"--set {text!r} lists a value of {key} twice")
        axes[key] = values
    if not axes:
        raise ParamsError("nothing to sweep: give at least one --set key.path=value1,value2")
    return axes


def grid(axes: dict[str, list]) -> list[Point]:
    """The product of the axes, the first key varying slowest."""
    keys = list(axes)
    return [
        Point(i, dict(zip(keys, combo, strict=True)))
        for i, combo in enumerate(itertools.product(*axes.values()), start=1)
    ]


def check_grid(params_path: Path, axes: dict[str, list], fixed: list[str]) -> tuple[Params, list]:
    """The baseline params (params.yaml with ``fixed`` overrides: a preset's) and every point,
    each validated as ``siamese run`` validates: all before any point runs. Every invalid point
    is named with its values and the key that refuses it."""
    from siamese.training.settings import check_trainer  # Lightning: once the axes parsed

    raw = apply_overrides(read_params_file(params_path), fixed)
    baseline = validate_params(raw, str(params_path))
    points = grid(axes)
    problems, trainers = [], set()
    for point in points:
        origin = f"sweep point {point.index} of {len(points)} ({point.label()})"
        try:
            params = validate_params(apply_overrides(raw, point.overrides()), origin)
            check_tracking_names(params, origin)
            trainer = json.dumps(params.trainer.model_dump(mode="json"), sort_keys=True)
            if trainer not in trainers:  # Lightning's answer depends on the trainer alone
                check_trainer(params, origin)
                trainers.add(trainer)
        except ParamsError as err:
            problems.append(str(err))
    if problems:
        raise ParamsError("\n".join(problems) + "\nnothing was run")
    return baseline, points


def dvc_set_param(key: str, value: Any) -> str:
    """``-S`` argument for DVC (Hydra's override grammar): ``++`` adds a key params.yaml leaves
    out; strings are quoted (so ``models:/x@champion`` or ``0.5`` given as a string stay
    strings) and floats written positionally (Hydra reads ``2e-05`` as a string)."""
    return f"++{key}={_hydra(value)}"


def _hydra(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        text = f"{Decimal(repr(value)):f}"
        return text if "." in text else f"{text}.0"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ", ".join(_hydra(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_hydra(v)}" for k, v in value.items()) + "}"
    raise ParamsError(f"a sweep cannot pass {value!r} ({type(value).__name__}) to DVC")


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _dvc(project: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True, text=True
    )


def _require_git_commit(project: Path) -> None:
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", "HEAD"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise ProjectError(
            f"{project} has no git commit: DVC experiments are stored against one (git init; "
            "git add -A; git commit -m baseline), then run the sweep again"
        )


def _error_line(output: str) -> str:
    """A failed point's one line: its stage's ``error: ...`` (siamese.cli prints exactly one),
    else DVC's last ``ERROR: ...``, else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    ours = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    theirs = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR: ")]
    return (ours[-1:] or theirs[-1:] or lines[-1:] or ["no output"])[0]


def shown_experiments(project: Path, env: dict[str, str]) -> dict[str, dict]:
    """``dvc exp show --json``: each experiment's data (params, metrics) by name."""
    proc = _dvc(project, "exp", "show", "--json", env=env)
    if proc.returncode != 0:
        raise ProjectError(f"dvc exp show failed: {_error_line(proc.stdout + proc.stderr)}")
    found = {}
    for baseline in json.loads(proc.stdout or "[]"):
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                if rev.get("name"):
                    found[rev["name"]] = rev.get("data") or {}
    return found


def _metrics(data: dict, path: str) -> dict:
    return ((data.get("metrics") or {}).get(path) or {}).get("data") or {}


def run_sweep(
    project: Path,
    sets: list[str],
    preset: str | None = None,
    wait: float = 0.0,
    echo: Callable[[str], None] = print,
) -> SweepResult:
    """Check the whole grid, then run each point as a DVC experiment (up to evaluate) under one
    MLflow parent run, and collect every point's metrics (``dvc exp show``) and child run."""
    project = project.resolve()
    params_path = project / paths.PARAMS
    fixed = preset_overrides(preset, project) if preset else []
    axes = parse_axes(sets)
    baseline, points = check_grid(params_path, axes, fixed)
    _require_git_commit(project)
    from siamese.stages.provenance import source_state  # data changed since its DVC record

    source_state(baseline.data.source, project, baseline.data.max_file_bytes, fingerprint=False)
    uri = tracking.tracking_uri(project)
    key = metric_key(baseline)
    with project_lock(project, wait):
        parent = runs.start_sweep_run(baseline, project, axes, len(points), TARGET)
        client = tracking.client(uri)
        with runs.ended_failed_on_error(parent):
            parent_run = client.get_run(parent)
            # the points' stages run in temporary copies: they must log to this store
            env = _env({"MLFLOW_TRACKING_URI": uri, runs.PARENT_RUN_ENV: parent})
            outcomes = []
            echo(f"sweep: {len(points)} points, MLflow parent run {parent_run.info.run_name}")
            for point in points:
                name = f"sweep-{parent[:6]}-{point.index}"  # unique: a new parent per sweep
                outcomes.append(_run_point(project, point, len(points), name, fixed, env, echo))
            shown = shown_experiments(project, env)
            children = runs.sweep_children(client, parent, parent_run.info.experiment_id)
            for o in outcomes:
                data = shown.get(o.experiment)
                if o.error is None and data is None:
                    o.error = f"DVC experiment {o.experiment} is not in `dvc exp show`"
                if data is not None:
                    o.test = _metrics(data, METRICS_FILE)
                    o.calibration = _metrics(data, CALIBRATION_FILE)
                child = children.get(o.experiment)
                if child is not None:
                    o.run_id, o.run_name = child.info.run_id, child.info.run_name
                    if o.test and o.calibration:
                        runs.log_result_metrics(client, o.run_id, o.calibration, o.test)
            result = SweepResult(
                metric=key,
                lower_is_better=RANKING_METRICS[baseline.register.promote_metric].lower_is_better,
                axes=axes,
                parent_run_id=parent,
                parent_run_name=parent_run.info.run_name,
                experiment_id=parent_run.info.experiment_id,
                tracking_uri=uri,
                outcomes=outcomes,
            )
            _record_on_parent(client, result)
    return result


def _run_point(
    project: Path,
    point: Point,
    total: int,
    name: str,
    fixed: list[str],
    env: dict[str, str],
    echo: Callable[[str], None],
) -> Outcome:
    echo(f"point {point.index}/{total}: {point.label()} (DVC experiment {name})")
    values = {}
    for text in fixed + point.overrides():
        k, v = text.split("=", 1)
        values[k] = load_yaml(v, text)
    args = ["exp", "run", "--temp", "--name", name]
    for k, v in values.items():
        args += ["--set-param", dvc_set_param(k, v)]
    proc = _dvc(project, *args, TARGET, env={**env, runs.SWEEP_POINT_ENV: name})
    if proc.returncode != 0:
        error = _error_line(proc.stdout + proc.stderr)
        echo(f"point {point.index}/{total}: failed: {error}")
        if os.environ.get("SIAMESE_VERBOSE") == "1":
            for line in (proc.stdout + proc.stderr).rstrip().splitlines():
                if not any(noise in line for noise in DVC_NOISE):
                    echo(f"  | {line}")
        return Outcome(point, name, error=error)
    return Outcome(point, name)


def _record_on_parent(client, result: SweepResult) -> None:
    """The table as the parent's ``sweep/results.json``, the best point as its metric and tag,
    and the parent ended FINISHED (FAILED when a point failed)."""
    ranked = result.ranked()
    rows = [
        {
            "rank": i,
            "experiment": o.experiment,
            "params": o.point.values,
            "val": o.calibration.get("val", {}),
            "test": o.test,
            "run_id": o.run_id,
            "error": o.error,
        }
        for i, o in enumerate(ranked, start=1)
    ]
    parent, key = result.parent_run_id, result.metric
    client.log_dict(parent, {"metric": key, "points": rows}, "sweep/results.json")
    best = ranked[0] if ranked and not ranked[0].error and key in ranked[0].test else None
    if best is not None:
        client.log_metric(parent, f"best.test.{key}", best.test[key])
        client.set_tag(parent, "siamese.sweep.best", best.experiment)
    client.set_terminated(parent, "FAILED" if result.failed else "FINISHED")


def format_table(result: SweepResult) -> str:
    """The ranked table: rank, DVC experiment, the swept values, the promotion metric on the
    validation pairs (at the calibrated threshold's evaluation) and test pairs, test accuracy,
    the MLflow run; failed points last with their error."""
    key = result.metric
    head = ["rank", "experiment", *result.axes, f"val {key}", f"test {key}", "test accuracy"]
    head.append("MLflow run")
    rows = []
    for i, o in enumerate(result.ranked(), start=1):
        val = o.calibration.get("val", {})
        cells = [str(i) if not o.error else "-", o.experiment]
        cells += [show(o.point.values[k]) for k in result.axes]
        if o.error:
            cells += ["failed", o.error[:60], "", o.run_name or ""]
        else:
            cells += [_num(val.get(key)), _num(o.test.get(key)), _num(o.test.get("accuracy"))]
            cells.append(o.run_name or "(no run)")
        rows.append(cells)
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    order = "lower" if result.lower_is_better else "higher"
    lines = [
        "",
        f"== siamese sweep: {len(result.outcomes)} points ranked by test {key} ({order} is "
        "better) ==",
        fmt(head),
        *(fmt(r) for r in rows),
        "",
        f"MLflow: parent run {result.parent_run_name} ({result.parent_run_id}), one child run per "
        f"point, in experiment {result.experiment_id} of {result.tracking_uri}",
        "DVC:    dvc exp show (the same points); nothing was registered or promoted: adopt a "
        "point with `dvc exp apply NAME && siamese run`",
    ]
    return "\n".join(lines)


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "n/a"
