"""Shared pytest fixtures: real data locations, an isolated copy of the project, and the
environment isolation every test runs in. The helpers the test modules import live in
tests/helpers/."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

# the helpers' asserts report their values, as a test's do (before they are first imported)
pytest.register_assert_rewrite("tests.helpers")

from tests.helpers.params import FAST_PARAMS  # noqa: E402
from tests.helpers.project import SHARED_DATA, make_project  # noqa: E402

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


@pytest.fixture(scope="session")
def lfw() -> Path:
    """Labeled Faces in the Wild as published: <person>/<person>_NNNN.jpg, 250 x 250 RGB,
    4,560 people, most with a single photo."""
    return _require(SHARED_DATA / "lfw" / "lfw")


@pytest.fixture
def small_faces(att_faces, tmp_path) -> Path:
    """A copy of 8 AT&T identities (5 images each): real photos, small enough for fast tests."""
    root = tmp_path / "faces"
    for ident in sorted(p for p in att_faces.iterdir() if p.is_dir())[:8]:
        (root / ident.name).mkdir(parents=True)
        for img in sorted(ident.iterdir())[:5]:
            shutil.copy(img, root / ident.name / img.name)
    return root


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
