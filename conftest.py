"""Shared pytest fixtures: real data locations and an isolated copy of the project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
SHARED_DATA = Path(os.environ.get("SIAMESE_SHARED_DATA", ROOT.parent / "shared" / "data"))
PROJECT_FILES = (
    "params.yaml",
    "dvc.yaml",
    ".dvcignore",
    ".gitignore",
    "data",
    "params",
    "src",
    ".dvc/config",
)

# tests must never touch a user's real tracking store or Prefect database
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.getbasetemp() / "prefect-home"
    monkeypatch.setenv("PREFECT_HOME", str(home))
    monkeypatch.setenv("GIT_AUTHOR_NAME", "siamese-tests")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "tests@example.invalid")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "siamese-tests")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "tests@example.invalid")
    bindir = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", bindir + os.pathsep + os.environ.get("PATH", ""))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real dataset not found at {path} (set SIAMESE_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def att_faces() -> Path:
    return _require(SHARED_DATA / "att_faces")


@pytest.fixture(scope="session")
def omniglot_zip() -> Path:
    """The official Omniglot background archive (images_background/<Alphabet>/<character>/)."""
    return _require(SHARED_DATA / "omniglot" / "images_background.zip")


@pytest.fixture(scope="session")
def svc2004() -> Path:
    """SVC2004 signatures: user<N>/genuine/*.png and user<N>/forged/*.png."""
    return _require(SHARED_DATA / "svc2004")


@pytest.fixture
def small_faces(att_faces, tmp_path) -> Path:
    """A copy of 8 AT&T identities (5 images each): real photos, small enough for fast tests."""
    root = tmp_path / "faces"
    for ident in sorted(p for p in att_faces.iterdir() if p.is_dir())[:8]:
        (root / ident.name).mkdir(parents=True)
        for img in sorted(ident.iterdir())[:5]:
            shutil.copy(img, root / ident.name / img.name)
    return root


def make_project(dest: Path, params_overrides: list[str] | None = None) -> Path:
    """A fresh copy of the project with its own git repo, DVC repo and MLflow store."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, target)
    if params_overrides:
        from siamese.params_file import set_params

        set_params(dest / "params.yaml", params_overrides)
    run = lambda *a: subprocess.run(a, cwd=dest, check=True, capture_output=True)  # noqa: E731
    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q", "--force")
    shutil.copy(ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "project copy")
    return dest


def tool_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell would give the project's commands: this venv's bin first."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return dict(os.environ, PATH=path, **extra)


def start_dvc(project: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``dvc ARGS`` in the project, in its own session (so a test can kill its whole tree), output
    (stdout and stderr) to a pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "dvc", *args],
        cwd=project,
        env=env or tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def dvc_json(project: Path, *args: str, env: dict | None = None):
    """A DVC command's ``--json`` output, run in the project like a user would."""
    out = subprocess.run(
        [sys.executable, "-m", "dvc", *args, "--json"],
        cwd=project,
        env=env or tool_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout or "{}")


# small but real settings: the code paths of a full run at a fraction of the cost
FAST_PARAMS = [
    "data.image_size=16",
    "mine.val_pairs=200",
    "mine.test_pairs=300",
    "mine.train_pairs=200",
    "model.channels=8",
    "model.embedding_dim=16",
    "train.identities_per_batch=4",
    "train.images_per_identity=4",
    "train.batches_per_epoch=4",
    "train.max_epochs=2",
]


# on top of FAST_PARAMS, for the 8 x 5 real faces of `small_faces`: few enough pairs to exist
FACES_PARAMS = [
    "data.image_size=24",
    "mine.val_pairs=20",
    "mine.test_pairs=20",
    "mine.train_pairs=20",
    "train.images_per_identity=3",
    "train.identities_per_batch=3",
]

# on top of FAST_PARAMS, for tests of what happens around training (registry, servers): one
# epoch and none of the evaluation extras
QUICK = [
    "train.max_epochs=1",
    "calibrate.bootstrap_resamples=0",
    "evaluate.bootstrap_resamples=0",
    "evaluate.kfold=0",
    "evaluate.oneshot_episodes=0",
    "evaluate.retrieval=false",
]


# on top of QUICK: a training long enough (4 epochs of 40 batches at 28 px) for a test to
# interrupt it between its first checkpoint and its end
INTERRUPTIBLE_EPOCHS, INTERRUPTIBLE_BATCHES = 4, 40
INTERRUPTIBLE = [
    f"train.max_epochs={INTERRUPTIBLE_EPOCHS}",
    f"train.batches_per_epoch={INTERRUPTIBLE_BATCHES}",
    "train.monitor=last",
    "data.image_size=28",
    "model.channels=16",
]


def last_checkpoint(project: Path) -> Path:
    """The epoch checkpoint an interrupted training of ``project`` resumes from."""
    from siamese import paths
    from siamese.training.resume import scratch_dir

    return project / scratch_dir(paths.TRAIN) / "checkpoints" / "last.ckpt"


def wait_for_checkpoint(project: Path, proc: subprocess.Popen, timeout: float = 300) -> Path:
    """Poll until the training run by ``proc`` wrote its first epoch checkpoint; its path."""
    path = last_checkpoint(project)
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"exited ({proc.returncode}) before a checkpoint:\n{out}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no checkpoint in {timeout:.0f} s")
        time.sleep(0.05)
    return path


@pytest.fixture
def fast_params() -> list[str]:
    return list(FAST_PARAMS)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    proj = make_project(tmp_path / "project", FAST_PARAMS)
    monkeypatch.chdir(proj)
    return proj


@pytest.fixture(scope="session")
def prefect_harness():
    """A throwaway Prefect API and database for the session, stopped cleanly at the end."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


# ---------------------------------------------------------------- the stages, chained as DVC does


def run_stages_until_evaluate(params) -> dict:
    """prepare -> mine -> train -> calibrate -> evaluate in the current project; the report."""
    from siamese import paths
    from siamese.stages.calibrate import run_calibrate
    from siamese.stages.evaluate import run_evaluate
    from siamese.stages.mine import run_mine
    from siamese.stages.prepare import run_prepare
    from siamese.stages.train import run_train

    run_prepare(params, paths.PREPARED)
    run_mine(params, paths.PREPARED, paths.PAIRS)
    run_train(params, paths.PREPARED, paths.PAIRS, paths.TRAIN, paths.TRAIN_METRICS)
    run_calibrate(params, paths.PREPARED, paths.PAIRS, paths.TRAIN, paths.CALIBRATION)
    return run_evaluate(
        params, paths.PREPARED, paths.PAIRS, paths.TRAIN, paths.CALIBRATION, paths.EVALUATION
    )


def run_register_stage(params) -> dict:
    from siamese import paths
    from siamese.stages.register import run_register

    return run_register(
        params,
        paths.PREPARED,
        paths.PAIRS,
        paths.TRAIN,
        paths.CALIBRATION,
        paths.EVALUATION,
        paths.REGISTRATION,
    )


def run_promote_stage(params, version: str | None = None) -> dict:
    from siamese import paths
    from siamese.stages.promote import run_promote

    return run_promote(params, paths.PREPARED, paths.PAIRS, paths.PROMOTION, version)


def register_and_promote(params) -> dict:
    """register, then promote (as the training flow does); the registration with the decision."""
    reg = run_register_stage(params)
    assert reg["aliases"] == ["challenger"]
    promo = run_promote_stage(params)
    return {
        **reg,
        "aliases": reg["aliases"] + (["champion"] if promo["promoted"] else []),
        "promoted": promo["promoted"],
        "promotion": promo,
    }


def run_all_stages(params) -> dict:
    run_stages_until_evaluate(params)
    return register_and_promote(params)
