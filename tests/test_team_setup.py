"""Team setup: the stages against a real `mlflow server` (PostgreSQL backend store, artefacts
served by the server from their own root) over HTTP instead of the project's SQLite file."""

from __future__ import annotations

import os

import mlflow
import pytest

from siamese.params_file import set_params
from siamese.registry.tracking import active_tracking_uri
from tests.helpers.params import QUICK
from tests.helpers.servers import (
    background,
    free_port,
    mlflow_server_cmd,
    postgres_database,
    wait_http,
)
from tests.helpers.stages import run_promote_stage, run_register_stage, run_stages_until_evaluate

pytestmark = pytest.mark.integration


@pytest.fixture
def postgres_db():
    """A fresh database for this test on the PostgreSQL server, dropped afterwards."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def mlflow_server(postgres_db, tmp_path):
    port = free_port()
    store = tmp_path / "server-artifacts"
    log = tmp_path / "mlflow-server.log"
    cmd = mlflow_server_cmd(port, postgres_db, store)
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    with background(cmd, log, env, cwd=tmp_path) as proc:
        url = f"http://127.0.0.1:{port}"
        problem = wait_http(f"{url}/health", proc, log, timeout=120)
        if problem:
            pytest.fail(f"mlflow server did not start: {problem}")
        yield url, store


def test_stages_record_to_a_tracking_server_on_postgres(project, mlflow_server, monkeypatch):
    url, store = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    params = set_params(project / "params.yaml", QUICK)
    run_stages_until_evaluate(params)
    reg = run_register_stage(params)
    promo = run_promote_stage(params)
    assert reg["tracking_uri"] == url and promo["decision"] == "promoted"

    # nothing went to the local SQLite store; everything is on the server
    assert not (project / "mlflow.db").exists() and not (project / "mlartifacts").exists()
    client = mlflow.MlflowClient(url)
    run = client.get_run(reg["run_id"])
    assert run.info.status == "FINISHED" and "test.roc_auc" in run.data.metrics
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    name = params.register.model_name
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == reg["version"] == "1"
    assert champion.tags["promotion.decision"] == "promoted"
    # the artefacts live under the server's --artifacts-destination, and load back over HTTP
    assert any(store.rglob("MLmodel"))
    with active_tracking_uri(url):
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert model.metadata.run_id == reg["run_id"]
