"""``siamese sweep`` and the no-change ``siamese run``.

Fast: the grid (axes, order, YAML values), the checks that refuse a bad value before anything
runs (through the real CLI), and the values as DVC's own ``--set-param`` parser writes them into
params.yaml. Slow (minutes): one whole ``siamese run`` on the tiny digits, then a no-change run
that starts no stage and no flow and says so, then a 2 x 2 sweep that leaves four DVC
experiments, four MLflow child runs under one parent and a table of four ranked rows, with the
workspace and the registry as they were."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml
from typer.testing import CliRunner

from pipelines.sweep import check_grid, dvc_set_param, grid, parse_axes
from siamese.cli import app
from siamese.errors import ParamsError
from siamese.registry.tracking import tracking_uri
from tests.helpers.params import FAST_PARAMS, QUICK
from tests.helpers.project import ROOT, dvc_json, make_project, tool_env

NAME = "siamese-digits"
runner = CliRunner()


def test_grid_is_the_product_of_the_axes_first_key_slowest():
    axes = parse_axes(
        ["train.margin=0.5,1.0", "train.lr=0.002, 0.004", "evaluate.far_targets=[0.01],[0.01,0.1]"]
    )
    assert axes == {
        "train.margin": [0.5, 1.0],
        "train.lr": [0.002, 0.004],
        "evaluate.far_targets": [[0.01], [0.01, 0.1]],
    }
    points = grid(axes)
    assert len(points) == 8 and [p.index for p in points] == list(range(1, 9))
    assert points[0].values == {
        "train.margin": 0.5,
        "train.lr": 0.002,
        "evaluate.far_targets": [0.01],
    }
    assert (
        points[-1].label() == "train.margin=1.0, train.lr=0.004, evaluate.far_targets=[0.01, 0.1]"
    )
    assert points[1].overrides() == [
        "train.margin=0.5",
        "train.lr=0.002",
        "evaluate.far_targets=[0.01, 0.1]",
    ]


@pytest.mark.parametrize(
    "sets, says",
    [
        ([], "nothing to sweep"),
        (["train.margin"], "must look like key.path=value1,value2"),
        (["train.margin="], "gives no value for train.margin"),
        (["train.margin=0.5,0.5"], "lists a value of train.margin twice"),
        (["train.margin=0.5", "train.margin=1.0"], "train.margin is given twice"),
        (["register.model_name=a,b"], "never registers, so register.* would change no point"),
    ],
)
def test_malformed_axes_are_refused(sets, says):
    with pytest.raises(ParamsError, match=re.escape(says)):
        parse_axes(sets)


def test_every_point_is_checked_and_each_bad_one_named(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    axes = parse_axes(["train.margin=0.5,-1", "train.loss=contrastive,triplet"])
    with pytest.raises(ParamsError) as err:
        check_grid(params, axes, [])
    message = str(err.value)
    # the point's values, then the key that refuses it and what it allows
    assert "sweep point 2 of 4 (train.margin=0.5, train.loss=triplet)" in message, message
    assert "miner 'hard_pairs' does not work with loss 'triplet'" in message, message
    assert "sweep point 3 of 4 (train.margin=-1, train.loss=contrastive)" in message, message
    assert "train.margin: margin must be a finite number > 0 (got -1.0)" in message, message
    assert "sweep point 1 " not in message and message.endswith("nothing was run")
    # fixed values (one-value axes) make the same points valid
    fixed = parse_axes(["train.loss=triplet", "train.miner=semi_hard", "train.margin=0.2,0.5"])
    baseline, points = check_grid(params, fixed, [])
    assert len(points) == 2 and baseline.train.loss == "contrastive"


def test_a_bad_sweep_value_runs_nothing(project):
    before = (project / "params.yaml").read_bytes()
    result = runner.invoke(app, ["sweep", "--set", "train.lr=0.002,-0.1", "--set", "seed=1,2"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    error = result.output[result.output.index("error: ") :]
    assert "sweep point 3 of 4 (train.lr=-0.1, seed=1)" in error and "  train.lr: " in error, error
    assert (project / "params.yaml").read_bytes() == before
    assert not (project / "mlflow.db").exists()  # no parent run
    assert not _experiments(project)


def test_values_reach_params_yaml_through_dvc_set_param_unchanged(tmp_path):
    """What a point validated is what DVC writes (its Hydra override parser, the real one)."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    values = {
        "train.loss": "triplet",
        "train.lr": 2e-05,  # Hydra reads 2e-05 as a string: written positionally
        "train.margin": 1.0,
        "seed": "42",  # a string that looks like a number stays a string
        "mine.hard_negatives_from": "models:/siamese-digits@champion",
        "data.source": "../shared/da ta/it's=x,y.zip",
        "evaluate.far_targets": [0.01, 0.001],
        "train.max_minutes": None,
        "model.normalize": False,
        "data.image_size": [16, 20],
        "train.ms_alpha": 3.0,  # not in params.yaml: added
        "augment": [{"name": "Affine", "params": {"rotate": [-5, 5], "p": 0.5}}],
    }
    apply_overrides(path, [dvc_set_param(k, v) for k, v in values.items()])
    written = yaml.safe_load(path.read_text())
    for key, value in values.items():
        node = written
        for part in key.split("."):
            node = node[part]
        if isinstance(value, float):  # DVC writes 2e-05, which PyYAML reads as a string
            node = float(node)  # and pydantic as the float (as after `siamese run --set`)
        assert node == value and type(node) is type(value), (key, node)


# ----------------------------------------------------------------- one project, minutes


def _siamese(project: Path, env: dict, *args: str) -> tuple[int, str]:
    proc = subprocess.run(
        ["siamese", *args], cwd=project, env=env, capture_output=True, text=True, timeout=1800
    )
    return proc.returncode, proc.stdout + proc.stderr


def _experiments(project: Path) -> dict[str, dict]:
    found = {}
    for baseline in dvc_json(project, "exp", "show"):
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                found[rev["name"]] = rev["data"]
    return found


@pytest.fixture(scope="module")
def ran(tmp_path_factory, prefect_harness) -> tuple[Path, dict]:
    """A project after one whole ``siamese run`` (pushed to its local remote)."""
    from prefect.settings import PREFECT_API_URL

    project = make_project(tmp_path_factory.mktemp("sweep") / "project", FAST_PARAMS + QUICK)
    env = tool_env(PREFECT_API_URL=PREFECT_API_URL.value())
    code, out = _siamese(project, env, "run")
    assert code == 0, out
    assert "train=ran" in out, out
    return project, env


@pytest.mark.slow  # a whole pipeline run first (shared with the sweep test)
@pytest.mark.timeout(2400)  # the module's pipeline run counts here; a loaded CI machine is slow
def test_no_change_run_starts_no_stage_and_says_so(ran):
    project, env = ran
    lock = (project / "dvc.lock").read_bytes()
    client = mlflow.MlflowClient(tracking_uri(project))
    runs_before = client.search_runs([client.get_experiment_by_name(NAME).experiment_id])

    code, out = _siamese(project, env, "run")

    assert code == 0, out
    assert "nothing to run: dvc status finds every stage up to date" in out, out
    assert "promotion has nothing to decide (unchanged)" in out, out
    stages = "prepare=skipped, mine=skipped, train=skipped, calibrate=skipped"
    assert f"stages: {stages}, evaluate=skipped, register=skipped" in out, out
    assert "Prefect:    no flow started (nothing to run)" in out, out
    assert f"registered model: {NAME} version 1 aliases: challenger, champion" in out, out
    assert "DVC push: already pushed" in out, out
    assert "Flow run" not in out and "Running stage" not in out, out  # no Prefect, no DVC stage
    assert (project / "dvc.lock").read_bytes() == lock
    runs_after = client.search_runs([client.get_experiment_by_name(NAME).experiment_id])
    assert len(runs_after) == len(runs_before)

    # a change DVC sees is run as before: the flow starts and the stages after it run
    code, out = _siamese(project, env, "run", "--set", "evaluate.histogram_bins=20", "--no-push")
    assert code == 0, out
    assert "evaluate=ran" in out and "train=skipped" in out and "nothing to run" not in out, out


@pytest.mark.slow  # four trainings as DVC experiments (minutes on two cores)
@pytest.mark.timeout(3600)
def test_sweep_2x2_four_experiments_four_child_runs_one_table(ran, tmp_path):
    project, env = ran
    params_before = (project / "params.yaml").read_bytes()
    lock_before = (project / "dvc.lock").read_bytes()

    code, out = _siamese(
        project, env, "sweep", "--set", "train.margin=0.5,1.0", "--set", "train.lr=0.002,0.004"
    )
    assert code == 0, out

    # four DVC experiments with the points' params and evaluate's metrics
    exps = {k: v for k, v in _experiments(project).items() if k.startswith("sweep-")}
    assert len(exps) == 4, exps.keys()
    points = set()
    for data in exps.values():
        train = data["params"]["params.yaml"]["data"]["train"]
        points.add((train["margin"], train["lr"]))
        assert "roc_auc" in data["metrics"]["artifacts/evaluate/metrics.json"]["data"]
    assert points == {(0.5, 0.002), (0.5, 0.004), (1.0, 0.002), (1.0, 0.004)}

    # one parent run, four child runs: each a point's training, with its test metrics
    client = mlflow.MlflowClient(tracking_uri(project))
    exp_id = client.get_experiment_by_name(NAME).experiment_id
    parents = client.search_runs([exp_id], filter_string="tags.`siamese.sweep` != ''")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = client.search_runs(
        [exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 4
    assert {c.data.tags["siamese.sweep.point"] for c in children} == set(exps)
    trained = {
        (float(c.data.params["train.margin"]), float(c.data.params["train.lr"])) for c in children
    }
    assert trained == points
    for child in children:
        test = exps[child.data.tags["siamese.sweep.point"]]["metrics"]
        auc = test["artifacts/evaluate/metrics.json"]["data"]["roc_auc"]
        assert child.data.metrics["test.roc_auc"] == pytest.approx(auc)
        assert child.info.status == "FINISHED"

    # the table: four rows ranked by test ROC AUC, best first
    rows = [line.split() for line in out.splitlines() if re.match(r"^[1-4]\s+sweep-", line)]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4], out
    aucs = [float(r[5]) for r in rows]
    assert aucs == sorted(aucs, reverse=True), out
    assert {r[1] for r in rows} == set(exps)
    logged = client.download_artifacts(parent.info.run_id, "sweep/results.json", str(tmp_path))
    assert json.loads(Path(logged).read_text())["points"][0]["experiment"] == rows[0][1]

    # the workspace and the registry are as they were: nothing registered or promoted
    assert (project / "params.yaml").read_bytes() == params_before
    assert (project / "dvc.lock").read_bytes() == lock_before
    versions = client.search_model_versions(f"name='{NAME}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
