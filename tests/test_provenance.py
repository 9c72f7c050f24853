"""Provenance of the trained data, on real DVC in a temporary git + DVC project: data changed
since its DVC record is refused (by ``siamese prepare``, under ``dvc repro`` and by ``siamese
run``) until it is versioned; a source DVC does not version is warned about on every run; a
source outside ``data/`` (invisible to DVC's change detection) is fingerprinted by prepare, and a
run re-runs prepare when it changed."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from siamese.cli import app
from siamese.errors import DatasetError
from siamese.io import read_json
from siamese.params_file import set_params
from siamese.stages.provenance import changed_since_prepared, source_state
from tests.helpers.images import reencode
from tests.helpers.params import FACES_PARAMS, QUICK
from tests.helpers.project import SHARED_DATA

runner = CliRunner()
PREPARED = "artifacts/prepared"


def _dvc(project, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=project, capture_output=True, text=True
    )


def _other_photo() -> bytes:
    """A real face the 8 identities of ``small_faces`` do not hold."""
    return reencode((SHARED_DATA / "att_faces" / "s2" / "1.pgm").read_bytes())


def _error(result) -> str:
    out = result.output
    assert "Traceback" not in out, out
    return " ".join(out[out.index("error: ") :].split())


STALE = (
    "data.source data/faces changed since its DVC record data/faces.dvc was made",
    "added: data/faces/s1/new.png",
    "modified: data/faces/s10/1.pgm",
    "deleted: data/faces/s11/2.pgm",
    "`dvc add data/faces`",
    "`dvc checkout data/faces`",
)


def test_data_changed_after_data_add_is_refused_until_it_is_versioned(project, small_faces):
    set_params(project / "params.yaml", FACES_PARAMS)
    assert runner.invoke(app, ["data", "add", str(small_faces), "--name", "faces"]).exit_code == 0
    faces = project / "data" / "faces"
    (faces / "s1" / "new.png").write_bytes(_other_photo())  # added
    photo = faces / "s10" / "1.pgm"
    photo.write_bytes(photo.read_bytes()[:-1] + b"\x00")  # modified (one pixel)
    (faces / "s11" / "2.pgm").unlink()  # deleted
    params = (project / "params.yaml").read_bytes()
    # the stage itself, and `siamese run` before any stage (or Prefect) starts: exit 2, no trace
    for command in (["prepare"], ["run"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        message = _error(result)
        for text in STALE:
            assert text in message, message
        assert not (project / "artifacts").exists() and not (project / "mlflow.db").exists()
        assert (project / "params.yaml").read_bytes() == params

    # versioned: prepared, recorded, and the new photo is in the DVC cache
    assert _dvc(project, "add", "data/faces").returncode == 0
    result = runner.invoke(app, ["prepare"])
    assert result.exit_code == 0, result.output
    assert "s1/new.png" in (project / PREPARED / "manifest.csv").read_text()
    assert read_json(project / PREPARED / "summary.json")["source_record"] == "data/faces.dvc"


def test_unversioned_sources_are_warned_about_and_an_outside_one_fingerprinted(
    project, small_faces, caplog
):
    caplog.set_level(logging.WARNING)
    set_params(project / "params.yaml", [*FACES_PARAMS, f"data.source={small_faces}"])
    result = runner.invoke(app, ["prepare"])
    assert result.exit_code == 0, result.output
    assert f"data.source {small_faces} is outside the project's data/ folder" in caplog.text
    assert "siamese data add" in caplog.text
    summary = read_json(project / PREPARED / "summary.json")
    assert summary["source_record"] is None and len(summary["source_fingerprint"]) == 64

    # DVC cannot see a change out there; the fingerprint prepare recorded does
    state = source_state(str(small_faces), project)
    assert state.fingerprint == summary["source_fingerprint"]
    assert not changed_since_prepared(state, project / PREPARED)
    assert "NOT versioned" in state.describe()
    (small_faces / "s1" / "new.png").write_bytes(_other_photo())
    assert changed_since_prepared(source_state(str(small_faces), project), project / PREPARED)
    (small_faces / "s1" / "new.png").unlink()
    (small_faces / "s1" / "notes.txt").write_text("a file prepare does not read, but counts")
    assert changed_since_prepared(source_state(str(small_faces), project), project / PREPARED)

    # inside data/ but never `dvc add`-ed: DVC sees changes, but cannot bring the files back
    caplog.clear()
    (small_faces / "s1" / "notes.txt").unlink()
    small_faces.rename(project / "data" / "faces")
    set_params(project / "params.yaml", ["data.source=data/faces"])
    result = runner.invoke(app, ["prepare"])
    assert result.exit_code == 0, result.output
    assert "data.source data/faces is not tracked by DVC (no .dvc record)" in caplog.text
    assert "`dvc add data/faces`" in caplog.text
    assert read_json(project / PREPARED / "summary.json")["source_fingerprint"] is None


@pytest.mark.slow
def test_run_notices_an_outside_source_change_and_refuses_a_stale_record(
    project, small_faces, prefect_harness
):
    """``siamese run``'s flow: a source outside data/ that changed re-runs prepare (DVC alone
    would skip it) and is warned about on every run; a stale DVC record fails a scheduled run."""
    from pipelines.flow import training_flow

    set_params(project / "params.yaml", [*FACES_PARAMS, *QUICK, f"data.source={small_faces}"])
    first = training_flow(project_dir=str(project), push=False, promote=False)
    assert first["stages"]["prepare"] == "ran" and "outside" in first["data_warning"]
    again = training_flow(project_dir=str(project), push=False, promote=False)
    assert set(again["stages"].values()) == {"skipped"}
    assert "NOT versioned" in again["data"] and "outside" in again["data_warning"]

    (small_faces / "s1" / "new.png").write_bytes(_other_photo())
    changed = training_flow(project_dir=str(project), push=False, promote=False)
    assert changed["stages"]["prepare"] == "ran", changed["stages"]
    assert "s1/new.png" in (project / PREPARED / "manifest.csv").read_text()

    # a stale record fails a scheduled run (no CLI in front) before any stage runs, and bare
    # `dvc repro`, which runs prepare since its data dependency changed
    (small_faces / "s1" / "new.png").unlink()
    assert runner.invoke(app, ["data", "add", str(small_faces), "--name", "faces"]).exit_code == 0
    (project / "data" / "faces" / "s1" / "again.png").write_bytes(_other_photo())
    lock = (project / "dvc.lock").read_bytes()
    with pytest.raises(DatasetError, match="added: data/faces/s1/again.png"):
        training_flow(project_dir=str(project), push=False, promote=False)
    assert (project / "dvc.lock").read_bytes() == lock
    proc = _dvc(project, "repro", "--single-item", "prepare")
    assert proc.returncode != 0, proc.stdout
    assert "added: data/faces/s1/again.png" in " ".join(proc.stderr.split()), proc.stderr
    assert (project / "dvc.lock").read_bytes() == lock
