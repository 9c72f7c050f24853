"""The thin CLI: commands exit non-zero with the bad key or file named, and ``data add`` brings
a real dataset under DVC."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from siamese.cli import app

runner = CliRunner()


def test_check_accepts_the_shipped_params(project):
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 0, result.output


def test_bad_params_fail_before_any_stage_runs(project):
    (project / "params.yaml").write_text("train:\n  loss: arcface\n  margin: -1\n")
    result = runner.invoke(app, ["prepare"])
    assert result.exit_code == 2
    assert "train.loss" in result.output and "train.margin" in result.output
    assert not (project / "artifacts" / "prepared").exists()


def test_run_rejects_a_bad_override_without_touching_params(project):
    before = (project / "params.yaml").read_text()
    result = runner.invoke(app, ["run", "--set", "train.images_per_identity=1"])
    assert result.exit_code == 2 and "train.images_per_identity" in result.output
    assert (project / "params.yaml").read_text() == before


@pytest.mark.parametrize("preset", ["omniglot", "att_faces", "svc2004"])
def test_shipped_presets_are_valid_params(preset):
    from siamese.config import apply_overrides, read_params_file, validate_params
    from siamese.params_file import preset_overrides

    root = Path(__file__).resolve().parents[1]
    overrides = preset_overrides(preset, root)
    params = validate_params(apply_overrides(read_params_file(root / "params.yaml"), overrides))
    assert params.register.model_name.endswith(preset.replace("_", "-"))


def test_run_with_an_unknown_preset_names_the_available_ones(project):
    before = (project / "params.yaml").read_text()
    result = runner.invoke(app, ["run", "--preset", "imagenet"])
    assert result.exit_code == 2
    assert "unknown preset 'imagenet'" in result.output and "omniglot" in result.output
    assert (project / "params.yaml").read_text() == before


def test_preset_values_land_in_params_yaml_and_set_wins(project):
    from siamese.params_file import preset_overrides, set_params

    set_params("params.yaml", preset_overrides("att_faces") + ["train.max_epochs=2"])
    raw = yaml.safe_load((project / "params.yaml").read_text())
    assert raw["data"]["image_size"] == 32 and raw["train"]["max_epochs"] == 2
    assert raw["augment"][0]["name"] == "Affine"


PRESETS = ["omniglot", "att_faces", "svc2004"]


@pytest.fixture
def presets_only(tmp_path, monkeypatch) -> Path:
    """params.yaml and the presets, nothing else: what applying a preset reads and writes."""
    root = Path(__file__).resolve().parents[1]
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(root / "params", tmp_path / "params")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_presets_compose_in_any_order(presets_only):
    # a preset starts from the defaults plus itself: Omniglot's split_by group, rotation_classes,
    # max_minutes, ... never leak into the next; a key no preset sets keeps the user's value
    from siamese.config import load_params
    from siamese.params_file import preset_overrides, set_params

    set_params("params.yaml", ["seed=7", "trainer.precision=bf16-mixed"])
    original = (presets_only / "params.yaml").read_text()
    alone = {}
    for name in PRESETS:
        alone[name] = set_params("params.yaml", preset_overrides(name)).model_dump()
        (presets_only / "params.yaml").write_text(original)
    for first, then in itertools.permutations(PRESETS, 2):
        set_params("params.yaml", preset_overrides(first))
        check = runner.invoke(app, ["check", "--preset", then])  # what `siamese run` applies
        assert check.exit_code == 0, (first, then, check.output)
        assert f"with preset {then}: ok" in check.output
        assert set_params("params.yaml", preset_overrides(then)).model_dump() == alone[then]
        params = load_params("params.yaml")
        assert params.seed == 7 and params.trainer.precision == "bf16-mixed"
    assert runner.invoke(app, ["check"]).exit_code == 0


def test_check_applies_preset_and_set_without_writing(presets_only):
    before = (presets_only / "params.yaml").read_text()
    ok = runner.invoke(app, ["check", "--preset", "att_faces", "--set", "train.max_epochs=2"])
    assert ok.exit_code == 0 and "--set train.max_epochs=2" in ok.output, ok.output
    # --set applies last: it can still break what the preset chose, and is named
    bad = runner.invoke(
        app, ["check", "--preset", "att_faces", "--set", "train.images_per_identity=1"]
    )
    assert bad.exit_code == 2 and "train.images_per_identity" in bad.output, bad.output
    assert "Traceback" not in bad.output
    assert (presets_only / "params.yaml").read_text() == before


def test_an_override_that_changes_nothing_keeps_the_line_and_its_comment(presets_only):
    from siamese.params_file import set_params

    before = (presets_only / "params.yaml").read_text()
    set_params("params.yaml", ["data.rotation_classes=[]", "data.identity_depth=null"])
    assert (presets_only / "params.yaml").read_text() == before
    set_params("params.yaml", ["data.identity_depth=2", "data.identity_depth=null"])
    assert (presets_only / "params.yaml").read_text() == before


def test_missing_dataset_is_named(project):
    (project / "params.yaml").write_text("data:\n  source: data/nowhere\n")
    result = runner.invoke(app, ["prepare"])
    assert result.exit_code == 2 and "data/nowhere does not exist" in result.output


def test_data_add_tracks_the_dataset_with_dvc(project, small_faces):
    result = runner.invoke(app, ["data", "add", str(small_faces), "--name", "faces"])
    assert result.exit_code == 0, result.output
    assert (project / "data" / "faces.dvc").is_file()
    assert len(list((project / "data" / "faces").iterdir())) == 8
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["data"]["source"] == "data/faces"
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "data/faces.dvc"],
        capture_output=True,
        text=True,
        cwd=project,
    )
    assert status.returncode == 0 and "up to date" in status.stdout
    # the prepare stage sees the tracked data as its input
    result = runner.invoke(app, ["prepare"])
    assert result.exit_code == 0, result.output
    assert '"identities": 8' in result.output


def test_data_add_refuses_a_bad_dataset_and_adds_nothing(project, small_faces):
    lonely = small_faces / "zz_lonely"
    lonely.mkdir()
    photo = bytearray(next((small_faces / "s1").iterdir()).read_bytes())
    photo[-1] ^= 0xFF  # one pixel changed: not a duplicate of s1's photo
    (lonely / "1.pgm").write_bytes(bytes(photo))
    result = runner.invoke(app, ["data", "add", str(small_faces)])
    assert result.exit_code == 2 and "identity 'zz_lonely'" in result.output
    assert not (project / "data" / "faces").exists()


def test_data_add_refuses_a_device_link_before_reading_or_copying_it(project, small_faces):
    (small_faces / "s1" / "zero.png").symlink_to("/dev/zero")
    result = runner.invoke(app, ["data", "add", str(small_faces)])
    assert result.exit_code == 2, result.output
    assert "zero.png: a character device (a symlink to /dev/zero)" in " ".join(
        result.output.split()
    )
    assert not (project / "data" / "faces").exists()
