"""``siamese data add``: the dataset is read under the data.on_* choices (given as options or in
params.yaml) before anything is copied, hard-linked instead of copied on the project's
filesystem, and versioned by DVC, whose cache then holds a copy of its own: a later edit of the
source never changes what was versioned (nor does DVC make the source read-only)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from siamese.cli import app
from tests.helpers.datasets import lfw_subset

runner = CliRunner()


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], capture_output=True, text=True, cwd=project
    )


def files(root: Path) -> dict[str, os.stat_result]:
    return {p.relative_to(root).as_posix(): p.stat() for p in root.rglob("*") if p.is_file()}


def cache_objects(project: Path) -> dict[str, Path]:
    """DVC's cache: md5 of the content -> the object file (the .dir listings left out)."""
    root = project / ".dvc" / "cache" / "files" / "md5"
    return {
        p.parent.name + p.name: p for p in root.rglob("*") if p.is_file() and p.suffix != ".dir"
    }


def test_data_add_of_lfw_skips_one_photo_people_links_and_is_versioned_by_dvc(
    lfw, project, tmp_path
):
    # LFW as published, cut down: 30 people with 2 photos, 8 with one (most of LFW is like that)
    faces = lfw_subset(lfw, tmp_path / "lfw_subset", people=30, per_person=2, singles=8)
    before = (project / "params.yaml").read_text()
    refused = runner.invoke(app, ["data", "add", str(faces), "--name", "lfw"])
    assert refused.exit_code == 2 and "on_small_identity" in refused.output, refused.output
    assert not (project / "data" / "lfw").exists()
    assert (project / "params.yaml").read_text() == before

    bad = runner.invoke(app, ["data", "add", str(faces), "--on-small-identity", "drop"])
    assert bad.exit_code == 2 and "data.on_small_identity" in bad.output, bad.output
    assert "'error' or 'skip'" in bad.output and "Traceback" not in bad.output

    source = files(faces)
    result = runner.invoke(
        app, ["data", "add", str(faces), "--name", "lfw", "--on-small-identity", "skip"]
    )
    assert result.exit_code == 0, result.output
    # one filesystem: every file hard-linked rather than copied
    assert "68 file(s) hard-linked, 0 copied" in result.output, result.output
    added = files(project / "data" / "lfw")
    assert added.keys() == source.keys() and len(added) == 68  # whole, as published
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["data"]["source"] == "data/lfw"
    assert params["data"]["on_small_identity"] == "skip"
    status = dvc(project, "status", "data/lfw.dvc")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout

    # DVC copied each file into its cache and checked a copy out in its place: the source
    # shares its inode with neither, and keeps its permissions
    objects = cache_objects(project)
    cached_inodes = {p.stat().st_ino for p in objects.values()}
    for rel, st in source.items():
        now = (faces / rel).stat()
        assert now.st_nlink == 1 and now.st_mode == st.st_mode, rel
        assert added[rel].st_ino != st.st_ino and st.st_ino not in cached_inodes, rel
    # so an edit of the source in place changes nothing that was versioned
    edited = faces / sorted(source)[0]
    with edited.open("ab") as fh:
        fh.write(b"edited")
    for md5, path in objects.items():
        assert hashlib.md5(path.read_bytes()).hexdigest() == md5, path
    assert dvc(project, "status", "data/lfw.dvc").stdout.strip().endswith("up to date.")

    prepared = runner.invoke(app, ["prepare"])
    assert prepared.exit_code == 0, prepared.output
    assert '"identities": 30' in prepared.output and '"skipped_identities": 8' in prepared.output


def test_data_add_copies_when_the_dvc_cache_hard_links(project, small_faces):
    """With cache.type hardlink, DVC would hard-link the workspace file into its cache: a link
    to the source would make the versioned copy the source's own inode (and DVC would make it
    read-only), so every file is copied instead."""
    assert dvc(project, "config", "cache.type", "hardlink").returncode == 0
    source = files(small_faces)
    result = runner.invoke(app, ["data", "add", str(small_faces), "--name", "faces"])
    assert result.exit_code == 0, result.output
    assert "0 file(s) hard-linked, 40 copied" in result.output, result.output
    for rel, st in source.items():
        now = (small_faces / rel).stat()
        assert now.st_nlink == 1 and now.st_mode == st.st_mode, rel  # DVC never saw it
    # the project's copy is what DVC linked into its cache
    assert (project / "data" / "faces" / sorted(source)[0]).stat().st_nlink == 2
