"""A stage that fails at run time loses nothing and says so in one line.

Under the real ``siamese run`` (Prefect flow, DVC stages in their own processes, MLflow in the
project's SQLite store), after a good run, a stage is made to fail by something no validation can
see: a file name the file system refuses, an accelerator the machine lacks, a tracking server that
is down, a SIGTERM in the middle of an epoch. Afterwards every previous output is byte-identical,
no MLflow run is left RUNNING, and the user saw exactly one ``error:`` line with the documented
exit code and no traceback (``--verbose`` shows it). The fast tests check the one translation of
operating-system and MLflow errors that gives that line. README.md "Guarantees" lists the same."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from mlflow.exceptions import RestException
from typer.testing import CliRunner

from siamese import paths
from siamese.cli import VERBOSE_ENV, app, explain
from siamese.errors import EXIT_ACCESS_DENIED, EXIT_BAD_INPUT, EXIT_SYSTEM, EXIT_UNREACHABLE
from siamese.params_file import set_params
from tests.helpers.checkpoints import wait_for_checkpoint
from tests.helpers.params import FAST_PARAMS, QUICK
from tests.helpers.project import ROOT, make_project, tool_env
from tests.helpers.servers import free_port

runner = CliRunner()
TOO_LONG = "data/" + "x" * 300  # one name over the 255 bytes every common file system allows
# a tracking server that is down, given up on at once
DEAD_SERVER = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def _digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (the outputs, dvc.lock, params are compared apart) by content."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _run_statuses(project: Path) -> list[str]:
    """The status of every MLflow run in the project's store, read from the database itself."""
    with sqlite3.connect(project / "mlflow.db") as db:
        return sorted(status for (status,) in db.execute("SELECT status FROM runs"))


# ------------------------------------------------------------------ the one translation (fast)


def test_os_errors_become_one_line_naming_the_path_the_cause_and_the_fix(tmp_path):
    with pytest.raises(OSError) as too_long:  # a real ENAMETOOLONG from the file system
        (tmp_path / ("x" * 300)).stat()
    message, code = explain(too_long.value, "prepare")
    assert code == EXIT_BAD_INPUT
    assert message.startswith("prepare: file name too long: ")
    assert "characters)" in message and "shorten it" in message
    assert len(message) < 600  # the 300-character name is shortened, not repeated whole

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full to produce a real ENOSPC")
    with pytest.raises(OSError) as full, open("/dev/full", "wb") as fh:  # a real ENOSPC
        fh.write(b"x")
        fh.flush()
    message, code = explain(full.value, "evaluate")
    assert code == EXIT_SYSTEM
    assert message.startswith("evaluate: no space left on device (ENOSPC)")
    assert "free disk space" in message and "previous outputs are unchanged" in message


@pytest.mark.parametrize(
    ("error_code", "exit_code", "says"),
    [
        ("INVALID_PARAMETER_VALUE", EXIT_BAD_INPUT, "rejected the register stage's request"),
        ("RESOURCE_DOES_NOT_EXIST", EXIT_BAD_INPUT, "register.model_name"),
        ("PERMISSION_DENIED", EXIT_ACCESS_DENIED, "permission denied: "),
        ("UNAUTHENTICATED", EXIT_ACCESS_DENIED, "MLFLOW_TRACKING_USERNAME"),
        ("INTERNAL_ERROR", EXIT_UNREACHABLE, "Rerun when the server is healthy"),
    ],
)
def test_tracking_server_answers_become_one_line_with_their_exit_code(error_code, exit_code, says):
    # what MLflow's REST client raises for such an answer of a tracking server
    answer = RestException({"error_code": error_code, "message": "Registered model 'm' says no"})
    try:  # raised inside the stage's own code, as the stage would see it
        raise RuntimeError("while registering") from answer
    except RuntimeError as err:
        message, code = explain(err, "register")
    assert code == exit_code
    assert f"({error_code}): Registered model 'm' says no" in message and says in message
    assert "\n" not in message


@pytest.fixture
def bare_project(tmp_path, monkeypatch) -> Path:
    """The least a stage command needs: params.yaml (small settings) and a data/ folder."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    set_params(tmp_path / "params.yaml", FAST_PARAMS)
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_unreachable_tracking_server_is_one_line_exit_4(bare_project, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    for key, value in DEAD_SERVER.items():
        monkeypatch.setenv(key, value)
    result = runner.invoke(app, ["rollback"])
    assert result.exit_code == EXIT_UNREACHABLE, result.output
    [line] = _error_lines(result.output)
    assert "is unreachable" in line and "rollback stage" in line
    assert "Traceback" not in result.output


def test_a_file_name_too_long_fails_the_stage_in_one_line_and_keeps_its_output(
    bare_project, monkeypatch
):
    assert runner.invoke(app, ["prepare"]).exit_code == 0
    before = _digest(bare_project / paths.PREPARED)
    set_params(bare_project / "params.yaml", [f"data.source={TOO_LONG}"])
    result = runner.invoke(app, ["prepare"])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    [line] = _error_lines(result.output)
    assert "file name too long: data/xxx" in line and "data.source" in line
    assert "Traceback" not in result.output
    assert _digest(bare_project / paths.PREPARED) == before

    monkeypatch.setenv(VERBOSE_ENV, "0")  # --verbose sets it in this process: restored after
    verbose = runner.invoke(app, ["--verbose", "prepare"])  # the same line, after the traceback
    assert verbose.exit_code == EXIT_BAD_INPUT
    assert _error_lines(verbose.output) == [line]
    assert "Traceback (most recent call last)" in verbose.output
    assert "File name too long" in verbose.output
    assert _digest(bare_project / paths.PREPARED) == before


def test_the_siamese_command_turns_any_uncaught_error_into_one_line(tmp_path):
    # `data download` does not translate an OSError itself: the command's last resort does
    dest = tmp_path / ("y" * 300)
    proc = subprocess.run(
        ["siamese", "data", "download", "omniglot-background", "--url", "file:///none.zip"]
        + ["--dest", str(dest)],
        env=tool_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == EXIT_BAD_INPUT, proc.stdout + proc.stderr
    [line] = _error_lines(proc.stderr)
    assert line.startswith("error: file name too long: ") and "yyy" in line
    assert "characters)" in line  # the 300-character name, shortened
    assert "Traceback" not in proc.stdout + proc.stderr


# ------------------------------------------------------------------ under `siamese run` (slow)


def _env(api_url: str, **extra: str) -> dict[str, str]:
    return tool_env(PREFECT_API_URL=api_url, **extra)


def _siamese_run(project: Path, args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        ["siamese", "run", "--no-push", *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, prefect_harness) -> tuple[Path, str]:
    """One good `siamese run` of the digits pipeline (made once; each case works on a copy) and
    the URL of the Prefect API the runs report to."""
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    root = tmp_path_factory.mktemp("failed-stages")
    with pytest.MonkeyPatch.context() as mp:  # the function-scoped isolation is not set up yet
        for who in ("AUTHOR", "COMMITTER"):
            mp.setenv(f"GIT_{who}_NAME", "siamese-tests")
            mp.setenv(f"GIT_{who}_EMAIL", "tests@example.invalid")
        project = make_project(root / "project", FAST_PARAMS + QUICK)
        proc = _siamese_run(project, [], _env(api_url))
        out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert _run_statuses(project) == ["FINISHED"]
    return project, api_url


def _interrupt_training(project: Path, proc: subprocess.Popen) -> None:
    """SIGTERM the `siamese train` process once it finished its first epoch (as a scheduler or
    `timeout` would), leaving DVC and the flow to see the stage fail."""
    wait_for_checkpoint(project, proc)
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if any(Path(c).name == "siamese" for c in cmd) and "train" in cmd:
            child.send_signal(signal.SIGTERM)
            return
    raise AssertionError("no `siamese train` process under `siamese run`")


CASES = {
    # a --set value that becomes a file name: refused by the file system, not by validation
    "prepare-name-too-long": ([f"--set=data.source={TOO_LONG}"], {}, 2, "file name too long"),
    # an accelerator this machine lacks: refused by the checks before any stage (no run opened)
    "trainer-refused-up-front": (
        ["--set=trainer.accelerator=mps"],
        {},
        2,
        "Lightning refuses these settings on this machine",
    ),
    # a killed training: the signal is turned into an interrupt, the run is ended FAILED
    "train-sigterm": (
        ["--set=train.max_epochs=3", "--set=train.batches_per_epoch=40"],
        {},
        128 + signal.SIGTERM,
        "stopped by SIGTERM",
    ),
    # the tracking server is down when register runs (a new model name re-runs only register)
    "register-server-down": (
        ["--set=register.model_name=siamese-elsewhere"],
        {"MLFLOW_TRACKING_URI": "http://127.0.0.1:{port}", **DEAD_SERVER},
        4,
        "is unreachable",
    ),
}


@pytest.mark.slow  # one good pipeline run, then a failing `siamese run` per case (CI runs it)
@pytest.mark.integration
@pytest.mark.parametrize(
    ("case", "verbose"),
    [(case, False) for case in CASES] + [("register-server-down", True)],
    ids=[*CASES, "register-server-down-verbose"],
)
def test_a_stage_failing_at_run_time_keeps_every_previous_output_and_says_one_line(
    good_run, tmp_path, case, verbose
):
    base, api_url = good_run
    args, extra_env, exit_code, says = CASES[case]
    project = tmp_path / "project"
    shutil.copytree(base, project, symlinks=True)
    before = _digest(project / paths.ARTIFACTS)
    lock_before = (project / "dvc.lock").read_bytes()
    runs_before = _run_statuses(project)
    extra_env = {k: v.format(port=free_port()) for k, v in extra_env.items()}

    started = time.monotonic()
    args = args + (["--verbose"] if verbose else [])
    proc = _siamese_run(project, args, _env(api_url, **extra_env))
    try:
        if case == "train-sigterm":
            _interrupt_training(project, proc)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    print(f"{case}: failed run took {time.monotonic() - started:.0f} s")

    assert proc.returncode == exit_code, out
    errors = _error_lines(out)
    assert len(errors) == 1, out
    assert says in out[out.index(errors[0]) :], out  # the error line and its indented details
    if verbose:
        assert "Traceback (most recent call last)" in out
    else:
        assert "Traceback" not in out, out

    # nothing lost: every previous output byte-identical, DVC's record unchanged, no scratch left
    # behind in artifacts/ except a killed training's epoch checkpoint (kept to resume from)
    after = _digest(project / paths.ARTIFACTS)
    if case == "train-sigterm":
        scratch = {k for k in after if k.startswith(".train.partial/")}
        assert ".train.partial/checkpoints/last.ckpt" in scratch
        after = {k: v for k, v in after.items() if k not in scratch}
    assert after == before
    assert (project / "dvc.lock").read_bytes() == lock_before
    # no MLflow run left RUNNING; a training that had started is ended FAILED
    statuses = _run_statuses(project)
    assert "RUNNING" not in statuses
    if case == "train-sigterm":  # a training that had started is ended FAILED
        assert statuses == sorted([*runs_before, "FAILED"])
    else:
        assert statuses == runs_before
