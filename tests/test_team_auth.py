"""The team registry's users and roles against a real ``mlflow server --app-name siamese-auth``
(PostgreSQL backend store, a fresh database and auth database for this module): a trainer
registers but cannot move ``champion``, a release manager promotes and rolls back, a service
(READ) loads and serves the champion but can neither register nor promote; missing or wrong
credentials end in one line and exit 7. Every refusal leaves the registry as it was.

One server and one training for the module; the cases run in order on the registry they share
(v1 a known-bad model made champion, v2 the trained one)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.exceptions import MlflowException

from siamese import paths
from siamese.cli import explain
from siamese.errors import EXIT_ACCESS_DENIED, AccessDeniedError
from siamese.params_file import set_params
from siamese.registry.loading import load_served_model
from siamese.registry.tracking import active_tracking_uri
from tests.helpers.params import FAST_PARAMS, QUICK
from tests.helpers.project import make_project
from tests.helpers.servers import (
    AUTH_APP,
    auth_app_pythonpath,
    background,
    free_port,
    mlflow_server_cmd,
    postgres_database,
    wait_http,
)
from tests.helpers.stages import run_promote_stage, run_register_stage, run_stages_until_evaluate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN = ("admin", "admin-password-for-tests-0")
USERS = {
    "trainer": "trainer-password-0123",
    "release": "release-password-0123",
    "service": "service-password-0123",
}
NAME = "siamese-digits"


def _as(monkeypatch: pytest.MonkeyPatch, user: str | None, password: str | None = None) -> None:
    """Act as ``user`` (None: without credentials) for what follows in this process."""
    if user is None:
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        return
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password or USERS.get(user, ADMIN[1]))


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """The server with its users: the admin creates the registered model (so no trainer owns it)
    and grants trainer EDIT, release MANAGE; service keeps the default READ."""
    root = tmp_path_factory.mktemp("team")
    pythonpath = auth_app_pythonpath(root / "entry-points")
    with postgres_database() as db:
        ini = root / "auth.ini"
        ini.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = sqlite:///{root / 'auth.db'}\n"
            f"admin_username = {ADMIN[0]}\n"
            f"admin_password = {ADMIN[1]}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # a password check is a deliberately slow hash: once a minute per user, not per
            # request (README "Team registry: users and roles")
            "auth_cache_ttl_seconds = 60\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        env.update(
            MLFLOW_AUTH_CONFIG_PATH=str(ini),
            MLFLOW_FLASK_SERVER_SECRET_KEY="siamese-tests-secret",
            PYTHONPATH=pythonpath,
        )
        port, log = free_port(), root / "mlflow-server.log"
        cmd = mlflow_server_cmd(port, db, root / "artifacts", app_name=AUTH_APP)
        with background(cmd, log, env, cwd=root) as proc:
            url = f"http://127.0.0.1:{port}"
            problem = wait_http(f"{url}/health", proc, log, timeout=180)
            if problem:
                pytest.fail(f"mlflow server did not start: {problem}")
            from mlflow.server.auth.client import AuthServiceClient

            with pytest.MonkeyPatch.context() as mp:
                _as(mp, *ADMIN)
                admin = AuthServiceClient(url)
                for user, password in USERS.items():
                    admin.create_user(user, password)
                mlflow.MlflowClient(url).create_registered_model(NAME)
                admin.grant_user_permission("trainer", "registered_model", NAME, "EDIT")
                admin.grant_user_permission("release", "registered_model", NAME, "MANAGE")
            yield url


@pytest.fixture(scope="module")
def project(team, tmp_path_factory):
    """A project trained once by the trainer, its outputs kept for the cases: v1 (all-zero
    weights, a known-bad model) registered by the trainer and made champion by the release
    manager; the trained weights back in artifacts/train for v2."""
    proj = make_project(tmp_path_factory.mktemp("team-project") / "project", FAST_PARAMS)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(proj)
        mp.setenv("MLFLOW_TRACKING_URI", team)
        params = set_params(proj / "params.yaml", QUICK)
        _as(mp, "trainer")
        run_stages_until_evaluate(params)
        good = proj / paths.TRAIN / "model.good.pt"
        shutil.copy(proj / paths.TRAIN / "model.pt", good)
        state = torch.load(good, map_location="cpu", weights_only=True)
        zeroed = {
            k: torch.zeros_like(v) if v.is_floating_point() and not k.endswith("running_var") else v
            for k, v in state.items()
        }
        torch.save(zeroed, proj / paths.TRAIN / "model.pt")
        assert run_register_stage(params)["version"] == "1"
        _as(mp, "release")
        assert run_promote_stage(params)["decision"] == "promoted"
        shutil.copy(good, proj / paths.TRAIN / "model.pt")
    return proj, params


@pytest.fixture
def as_user(team, project, monkeypatch):
    """Switch the test's credentials: ``as_user("trainer")``; in the project, on the server."""
    monkeypatch.chdir(project[0])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team)
    return lambda user, password=None: _as(monkeypatch, user, password)


def _state(url: str) -> dict:
    """What a refusal must leave unchanged: the aliases, the versions and their tags."""
    client = mlflow.MlflowClient(url)
    model = client.get_registered_model(NAME)
    versions = client.search_model_versions(f"name='{NAME}'")
    return {
        "aliases": dict(model.aliases),
        "model_tags": dict(model.tags),
        "versions": {str(mv.version): dict(mv.tags) for mv in versions},
    }


def _siamese(project: Path, user: str | None, password: str | None, *args: str):
    """``siamese ARGS`` as that user: (exit code, the one ``error:`` line or None)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    if user is not None:
        env.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password or "")
    proc = subprocess.run(
        ["siamese", *args], cwd=project, env=env, capture_output=True, text=True, timeout=600
    )
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) <= 1, out
    return proc.returncode, (errors[0] if errors else None)


def test_roles_register_promote_rollback_and_serve(team, project, as_user):
    proj, params = project
    # the trainer registers v2 (challenger) but may not move champion
    as_user("trainer")
    assert run_register_stage(params)["version"] == "2"
    before = _state(team)
    assert before["aliases"] == {"champion": "1", "challenger": "2"}
    with pytest.raises(AccessDeniedError) as err:
        run_promote_stage(params)
    message, code = explain(err.value)
    assert code == EXIT_ACCESS_DENIED
    assert "permission denied" in message and "'trainer' holds EDIT" in message
    assert "MANAGE" in message and "Nothing was changed" in message
    assert _state(team) == before
    # ... not even by a raw REST call: the server refuses the alias move itself
    with pytest.raises(MlflowException) as raw:
        mlflow.MlflowClient(team).set_registered_model_alias(NAME, "champion", "2")
    assert raw.value.get_http_status_code() == 403
    assert "takes MANAGE" in str(raw.value)
    assert _state(team) == before
    # the CLI: one line, exit 7, nothing changed
    code, line = _siamese(proj, "trainer", USERS["trainer"], "rollback")
    assert code == EXIT_ACCESS_DENIED and "permission denied" in line and "rollback" in line
    assert _state(team) == before

    # the service reads: loads and serves the champion, but registers and promotes nothing
    as_user("service")
    model = load_served_model(f"models:/{NAME}@champion", team)
    assert model.threshold == pytest.approx(model.calibration["threshold"])
    with active_tracking_uri(team):
        served = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    assert served.metadata.run_id
    # a package no version serves yet (another serving limit), so the register stage has to write
    other = params.model_copy(update={"serve": params.serve.model_copy(update={"max_rows": 77})})
    with pytest.raises(Exception) as err:
        run_register_stage(other)
    message, code = explain(err.value, "register")
    assert code == EXIT_ACCESS_DENIED and "permission denied" in message, message
    with pytest.raises(AccessDeniedError):
        run_promote_stage(params)
    assert _state(team) == before

    # the release manager promotes (v2 beats the known-bad v1) and rolls back
    as_user("release")
    promo = run_promote_stage(params)
    assert promo["decision"] == "promoted"
    champion = mlflow.MlflowClient(team).get_model_version_by_alias(NAME, "champion")
    assert str(champion.version) == "2"
    # the record names the digest that was scored: the one registered
    assert champion.tags["promotion.model_sha256"] == champion.tags["siamese.model_sha256"]
    code, line = _siamese(proj, "release", USERS["release"], "rollback")
    assert code == 0, line
    assert _state(team)["aliases"] == {"champion": "1", "challenger": "2"}


def test_missing_or_wrong_credentials_get_one_line_and_exit_7(team, project, as_user):
    proj, _ = project
    as_user("release")
    before = _state(team)
    for user, password, said in [
        (None, None, "no credentials were given"),
        ("release", "not-the-password", "credentials of user 'release' were not accepted"),
        ("nobody", "whatever", "credentials of user 'nobody' were not accepted"),
    ]:
        code, line = _siamese(proj, user, password, "promote")
        assert code == EXIT_ACCESS_DENIED, line
        assert line.startswith("error: not authenticated:") and said in line, line
        assert "MLFLOW_TRACKING_USERNAME" in line
    as_user("release")
    assert _state(team) == before
