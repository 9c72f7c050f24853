"""The tracking server goes away mid-run: a real `mlflow server` (SQLite backend, served
artefacts) that the test stops and starts again on the same port and store.

Stages must fail after bounded retries with a message that says what happened, leave nothing
half-registered, and a rerun once the server is back must complete (training resuming from its
last epoch checkpoint instead of starting over)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from siamese import paths
from siamese.params_file import set_params
from siamese.registry.aliases import REGISTRATION_TAG
from siamese.registry.tracking import is_tracking_unreachable
from tests.helpers.checkpoints import wait_for_checkpoint
from tests.helpers.params import INTERRUPTIBLE, INTERRUPTIBLE_BATCHES, INTERRUPTIBLE_EPOCHS, QUICK
from tests.helpers.project import start_dvc
from tests.helpers.servers import free_port, launch, log_tail, mlflow_server_cmd, stop, wait_http
from tests.helpers.stages import run_register_stage, run_stages_until_evaluate

# both start a real tracking server (twice); CI runs them with the slow tests
pytestmark = [pytest.mark.integration, pytest.mark.slow]

# small bounds so the test does not wait minutes for the failure (the defaults: tracking.py)
RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


class TrackingServer:
    """`mlflow server` that can be stopped and started again with the same store and port."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "mlflow-server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        backend = f"sqlite:///{self.root / 'server.db'}"
        cmd = mlflow_server_cmd(self.port, backend, self.root / "server-artifacts")
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        self.proc = launch(cmd, self.log, env, cwd=self.root)
        problem = wait_http(f"{self.url}/health", self.proc, self.log, timeout=120)
        if problem:
            pytest.fail(f"mlflow server did not start: {problem}")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    def client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(self.url)


@pytest.fixture
def server(tmp_path, monkeypatch):
    for key, value in RETRIES.items():
        monkeypatch.setenv(key, value)
    root = tmp_path / "tracking"
    root.mkdir()
    srv = TrackingServer(root)
    srv.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", srv.url)
    try:
        yield srv
    finally:
        srv.stop()


def _versions(client, name: str) -> list:
    return sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))


def test_server_lost_during_training_fails_clearly_then_rerun_resumes(project, server):
    params = set_params(project / "params.yaml", QUICK + INTERRUPTIBLE)
    repro = start_dvc(project, "repro")
    try:
        last_ckpt = wait_for_checkpoint(project, repro)
        server.stop()  # mid-training: the next epoch's metrics have nowhere to go
        stopped = time.monotonic()
        out, _ = repro.communicate(timeout=300)
        failed_after = time.monotonic() - stopped
    finally:
        if repro.poll() is None:
            repro.kill()
    assert repro.returncode != 0, out
    text = " ".join(out.split())
    assert f"the MLflow tracking server {server.url} is unreachable" in text, out
    assert "gave up after 2 retries" in text
    assert "no model version was left half-registered" in text
    assert "training resumes from its last epoch checkpoint" in text
    assert "Traceback" not in out
    assert failed_after < 120, f"took {failed_after:.0f} s to give up"  # bounded, not minutes
    assert not (project / paths.TRAIN).exists() and last_ckpt.is_file()
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"prepare", "mine"}

    server.start()  # the server is back, with the same store
    client = server.client()
    name = params.register.model_name
    assert client.search_registered_models() == []  # nothing (half-)registered
    resumed_from = torch.load(last_ckpt, weights_only=True)["epoch"]

    repro = start_dvc(project, "repro")
    out, _ = repro.communicate(timeout=500)
    assert repro.returncode == 0, out
    metrics = json.loads((project / paths.TRAIN_METRICS).read_text())
    assert metrics["resumed_after_epoch"] == resumed_from
    assert metrics["epochs_trained"] == INTERRUPTIBLE_EPOCHS
    assert metrics["global_steps"] == INTERRUPTIBLE_EPOCHS * INTERRUPTIBLE_BATCHES
    [version] = _versions(client, name)
    assert version.tags[REGISTRATION_TAG] == "complete"
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED" and "test.roc_auc" in run.data.metrics
    exp = client.get_experiment_by_name(params.register.experiment_name)
    assert len(client.search_runs([exp.experiment_id])) == 1  # the resumed run, not a second


def test_server_lost_inside_register_leaves_a_marked_version_the_rerun_removes(
    project, server, monkeypatch
):
    from siamese.registry.aliases import evaluation_problem

    params = set_params(project / "params.yaml", QUICK)
    run_stages_until_evaluate(params)
    client, name = server.client(), params.register.model_name
    original = mlflow.MlflowClient.set_registered_model_alias

    def server_dies_first(self, *args, **kwargs):
        server.stop()  # after the version was created, before it got its alias
        return original(self, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", server_dies_first)
    with pytest.raises(Exception) as err:
        run_register_stage(params)
    assert is_tracking_unreachable(err.value), err.value
    assert not (project / paths.REGISTRATION).exists()  # no local record of a registration
    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", original)

    server.start()
    [half] = _versions(client, name)  # the cleanup could not reach the server either
    assert half.tags[REGISTRATION_TAG] == "pending"
    problem = evaluation_problem(client, half, "roc_auc")
    assert problem and "unfinished registration" in problem  # promote would refuse it

    reg = run_register_stage(params)
    assert reg["removed_unfinished_versions"] == [str(half.version)]
    [whole] = _versions(client, name)
    assert str(whole.version) == reg["version"] != str(half.version)
    assert whole.tags[REGISTRATION_TAG] == "complete"
    assert client.get_model_version_by_alias(name, "challenger").version == whole.version
    assert log_tail(server.log)  # the server really ran (its log is there for a failure)
