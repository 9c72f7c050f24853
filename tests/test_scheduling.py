"""Scheduled retraining on a real Prefect server: `siamese deploy` serves the retrain-and-promote
deployment with its cron schedule, the server schedules runs, and a triggered run is executed by
that runner: it trains on the built-in digits, registers a version and the gate promotes it."""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import mlflow
import pytest

from siamese.registry.tracking import tracking_uri
from tests.helpers.params import FAST_PARAMS, QUICK
from tests.helpers.project import make_project
from tests.helpers.servers import background, free_port, log_tail, wait_http

# a real `prefect server` plus a triggered pipeline run (about 2 min): CI runs it with the slow set
pytestmark = [pytest.mark.integration, pytest.mark.slow]

CRON, TZ = "0 3 * * 1", "Europe/Berlin"
FLOW, DEPLOYMENT = "siamese-retrain-and-promote", "nightly-test"


@pytest.fixture
def prefect_server(tmp_path):
    """`prefect server start` (SQLite under a temporary PREFECT_HOME) on a free port."""
    port = free_port()
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-server"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
    )
    log = tmp_path / "prefect-server.log"
    prefect = str(Path(sys.executable).parent / "prefect")
    cmd = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with background(cmd, log, env) as proc:
        url = f"http://127.0.0.1:{port}/api"
        problem = wait_http(f"{url}/health", proc, log, timeout=120)
        if problem:
            pytest.skip(f"prefect server did not start: {problem}")
        yield url


def _wait(what: str, fn, timeout: float, logs: list[Path]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(1)
    tails = "\n".join(f"--- {p.name}\n{log_tail(p)}" for p in logs)
    pytest.fail(f"timed out waiting for {what}\n{tails}")


def test_deploy_schedules_and_a_triggered_run_trains_registers_and_promotes(
    prefect_server, tmp_path
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    project = make_project(tmp_path / "project", FAST_PARAMS + QUICK)
    env = dict(os.environ, PREFECT_API_URL=prefect_server, PREFECT_RUNNER_POLL_FREQUENCY="2")
    env.pop("MLFLOW_TRACKING_URI", None)
    runner_log = tmp_path / "runner.log"
    cmd = [sys.executable, "-m", "siamese", "deploy", "--project", str(project)]
    cmd += ["--cron", CRON, "--timezone", TZ, "--name", DEPLOYMENT]
    with (
        background(cmd, runner_log, env, cwd=tmp_path) as runner,
        temporary_settings({PREFECT_API_URL: prefect_server}),
        get_client(sync_client=True) as client,
    ):

        def deployment():
            assert runner.poll() is None, log_tail(runner_log)
            try:
                return client.read_deployment_by_name(f"{FLOW}/{DEPLOYMENT}")
            except Exception:
                return None

        dep = _wait("the deployment", deployment, 120, [runner_log])
        assert dep.parameters == {"project_dir": str(project.resolve())}
        (sched,) = dep.schedules
        assert sched.schedule.cron == CRON and sched.schedule.timezone == TZ and sched.active

        only_dep = DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))

        def scheduled():
            state = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            return client.read_flow_runs(
                deployment_filter=only_dep,
                flow_run_filter=FlowRunFilter(state=state),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                limit=20,
            )

        upcoming = _wait("scheduled runs", scheduled, 60, [runner_log])
        for run in upcoming:  # Mondays 03:00 Berlin time, in the future
            local = run.expected_start_time.astimezone(ZoneInfo(TZ))
            assert (local.weekday(), local.hour, local.minute) == (0, 3, 0)
            assert run.expected_start_time > dt.datetime.now(dt.UTC)

        # trigger one now; the served runner picks it up and executes it
        started = time.monotonic()
        flow_run = client.create_flow_run_from_deployment(dep.id)

        def finished():
            fr = client.read_flow_run(flow_run.id)
            return fr if fr.state and fr.state.is_final() else None

        final = _wait("the triggered run to finish", finished, 420, [runner_log])
        elapsed = time.monotonic() - started
        assert final.state.type == StateType.COMPLETED, (
            f"{final.state.message}\n{log_tail(runner_log, 60)}"
        )
        assert final.deployment_id == dep.id
        # the training and promotion flows ran as its subflows
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id={"any_": [final.id]}),
            sort=FlowRunSort.START_TIME_ASC,
            limit=20,
        )
        names = {client.read_flow(c.flow_id).name for c in children}
        assert {"siamese-training", "siamese-promotion"} <= names, names

    ml = mlflow.MlflowClient(tracking_uri(project))
    versions = ml.search_model_versions("name='siamese-digits'")
    assert [str(v.version) for v in versions] == ["1"]
    champion = ml.get_model_version_by_alias("siamese-digits", "champion")
    assert str(champion.version) == "1"  # the first version: nothing to beat
    assert champion.tags["promotion.decision"] == "promoted"
    print(f"triggered run completed in {elapsed:.0f} s")
