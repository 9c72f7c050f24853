"""Registry states no stage produces but an operator meets: the champion's model files deleted
from the artifact store, ``mlflow.db`` lost while dvc.lock says everything is done, a version
asked for that does not exist, and a retraining after a lost DVC cache. Each ends in one
``error: ...`` naming the repairing command (exit 2, no traceback), and that command restores a
working state: the champion loads and serves, and an identical model is never registered twice.

The pipeline runs once (``siamese run`` on the digits, through DVC and Prefect) into a
module-scoped project; each case works on its own copy."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from siamese.cli import app
from siamese.data.images import encode_png
from siamese.registry.tracking import tracking_uri
from tests.helpers.params import FAST_PARAMS, QUICK
from tests.helpers.project import copy_project, make_project, tool_env

NAME = "siamese-digits"


def _siamese(project: Path, env: dict, *args: str, timeout: float = 600) -> tuple[int, str]:
    """``siamese ARGS`` in the project as a user runs it: exit code, stdout + stderr."""
    proc = subprocess.run(
        ["siamese", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _error(output: str) -> str:
    """The ``error: ...`` message, joined into one line (the terminal may wrap it)."""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, output
    return lines[0]


def _client(project: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri(project))


def _versions(project: Path) -> list[str]:
    found = _client(project).search_model_versions(f"name='{NAME}'")
    return sorted(str(mv.version) for mv in found)


def _champion(project: Path) -> str:
    return str(_client(project).get_model_version_by_alias(NAME, "champion").version)


def _digit_pngs(dest: Path) -> list[Path]:
    from sklearn.datasets import load_digits

    d = load_digits()
    out = []
    for i in (0, 1):
        path = dest / f"digit{i}.png"
        path.write_bytes(encode_png((d.images[i] / 16 * 255).astype(np.uint8)))
        out.append(path)
    return out


def _serves(project: Path, env: dict, images: list[Path]) -> None:
    """The champion loads and answers through the CLI."""
    proc = subprocess.run(
        ["siamese", "verify", *map(str, images), "--json"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["model"] == f"models:/{NAME}@champion" and answer["distance"] >= 0


@pytest.fixture(scope="module")
def completed(tmp_path_factory, prefect_harness) -> tuple[Path, dict]:
    """A project after one whole ``siamese run`` (v1 champion and challenger), and the
    environment its commands run in."""
    from prefect.settings import PREFECT_API_URL

    root = tmp_path_factory.mktemp("repair")
    project = make_project(root / "completed", FAST_PARAMS + QUICK)
    env = tool_env(PREFECT_API_URL=PREFECT_API_URL.value())
    code, out = _siamese(project, env, "run", "--no-push")
    assert code == 0, out
    assert _versions(project) == ["1"] and _champion(project) == "1"
    return project, env


@pytest.fixture
def broken(completed, tmp_path):
    """A copy of the completed project for one case."""
    project, env = completed
    return copy_project(project, tmp_path / "project"), env


def _lose_champion_files(project: Path) -> None:
    """Delete the champion's model files from the artifact store (its logged model's folder)."""
    uri = _client(project).get_model_version_download_uri(NAME, _champion(project))
    folder = Path(uri.removeprefix("file://"))
    assert folder.is_dir() and project in folder.parents, uri
    shutil.rmtree(folder)


@pytest.mark.slow  # one whole pipeline run, then two more runs and the repairs (minutes)
@pytest.mark.parametrize(
    "state", ["champion_files_lost", "mlflow_db_lost", "missing_version", "retrain_after_cache"]
)
def test_registry_state_names_its_repair_and_the_repair_works(broken, state, tmp_path):
    project, env = broken
    images = _digit_pngs(tmp_path)
    lock_before = yaml.safe_load((project / "dvc.lock").read_text())["stages"]

    if state == "champion_files_lost":
        _lose_champion_files(project)
        for command in (["verify", *map(str, images)], ["promote"]):
            code, out = _siamese(project, env, *command)
            message = _error(out)
            assert code == 2, out
            assert f"model {NAME} version 1 (alias challenger, champion)" in message, message
            assert "model files are missing" in message and "MLmodel" in message, message
            assert "`siamese register --force`" in message, message
        code, out = _siamese(project, env, "register", "--force")
        assert code == 0, out
        registration = json.loads((project / "artifacts/register/registration.json").read_text())
        assert registration["version"] == "1" and registration["reused_version"], registration
        assert "MLmodel" in registration["restored_files"], registration
        tags = _client(project).get_model_version(NAME, "1").tags
        assert "siamese.files_restored_at" in tags

    elif state == "mlflow_db_lost":
        (project / "mlflow.db").unlink()
        code, out = _siamese(project, env, "register")
        message = _error(out)
        assert code == 2, out
        run_id = json.loads((project / "artifacts/train/run.json").read_text())["run_id"]
        assert f"the MLflow run {run_id}" in message and "is not in the tracking store" in message
        assert "`siamese register --force`" in message and "`siamese run`" in message, message
        # `siamese run` sees that the registry lacks the run and re-registers what DVC skips
        code, out = _siamese(project, env, "run", "--no-push")
        assert code == 0, out
        assert "train=skipped" in out and "register=ran" in out, out
        assert f"registered model: {NAME} version 1 aliases: challenger, champion" in out, out
        registration = json.loads((project / "artifacts/register/registration.json").read_text())
        assert registration["recreated_run"] and registration["train_run_id"] == run_id
        run = _client(project).get_run(registration["run_id"])
        assert run.data.tags["siamese.recreated_from"] == run_id
        assert run.info.status == "FINISHED" and "test.roc_auc" in run.data.metrics
        # repaired for good: the next run finds nothing to do (the re-created run stands in)
        code, again = _siamese(project, env, "run", "--no-push")
        assert code == 0 and "register=skipped" in again and "re-registering" not in again, again
        # what dvc.lock recorded up to the trained model is unchanged: nothing was retrained
        lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
        for stage in ("prepare", "mine", "train", "calibrate", "evaluate"):
            assert lock[stage] == lock_before[stage], stage

    elif state == "missing_version":
        code, out = _siamese(project, env, "promote", "--version", "7")
        message = _error(out)
        assert code == 2, out
        versions = "versions: 1 (challenger, champion)"
        assert message == f"error: model {NAME} has no version 7; {versions}", message
        code, out = _siamese(project, env, "promote", "--version", "1")
        assert code == 0, out
        promotion = json.loads((project / "artifacts/promote/promotion.json").read_text())
        assert promotion["decision"] == "unchanged", promotion

    elif state == "retrain_after_cache":
        # the DVC cache and the trained outputs are lost: the next run trains again, and the
        # bit-identical model it registers is the version that already serves it
        shutil.rmtree(project / ".dvc" / "cache")
        shutil.rmtree(project / "artifacts" / "train")
        code, out = _siamese(project, env, "run", "--no-push")
        assert code == 0, out
        assert "train=ran" in out and "register=ran" in out, out
        registration = json.loads((project / "artifacts/register/registration.json").read_text())
        assert registration["reused_version"] and registration["version"] == "1", registration
        assert registration["train_run_id"] != registration["run_id"]  # a new training run
        experiment = _client(project).get_experiment_by_name(NAME).experiment_id
        assert len(_client(project).search_runs([experiment])) == 2

    # a working state: one version, the champion, loading and serving
    assert _versions(project) == ["1"]
    assert _champion(project) == "1"
    _serves(project, env, images)


def test_promote_of_a_missing_version_names_the_versions(project):
    """Cheap companion of the case above, in the default suite: a registered model without the
    asked-for version fails with exit 2 and the versions it has, having changed nothing."""
    client = _client(project)
    client.create_registered_model(NAME)
    result = CliRunner().invoke(app, ["promote", "--version", "3"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"error: model {NAME} has no version 3; versions: none" in result.output
    assert not (project / "artifacts" / "promote").exists()
    assert client.get_registered_model(NAME).aliases == {}
