"""Manifests (``data.layout: csv``): a CSV or Parquet table listing each image's path (relative
to the table's folder) and identity, with optional group, split and forged columns, read by the
real ``siamese prepare`` / ``mine`` / ``train`` (in process) on real AT&T faces. The bad-input
cases of a manifest (a missing file, a non-image, an escaping path, an empty identity, a missing
column, an unknown split, a split that leaks an identity) are in tests/test_bad_input.py."""

from __future__ import annotations

import csv
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from siamese.cli import app
from siamese.data.manifests import read_manifest
from siamese.errors import DatasetError
from siamese.io import read_json
from siamese.params_file import set_params
from tests.helpers.params import FACES_PARAMS

runner = CliRunner()
SPLIT_OF = dict.fromkeys(("s1", "s10", "s11", "s12"), "train")
SPLIT_OF |= {"s13": "val", "s14": "val", "s15": "test", "s16": "test"}


@pytest.fixture
def rows(project, att_faces) -> list[dict]:
    """8 AT&T people x 5 photos under data/faces/images/<person>/, and one table row per photo:
    path (relative to data/faces, where the tables go), identity, split, a group per pair of
    people, and the first photo of each person flagged forged."""
    set_params(project / "params.yaml", FACES_PARAMS)
    out = []
    for i, person in enumerate(sorted(p for p in att_faces.iterdir() if p.is_dir())[:8]):
        dest = project / "data" / "faces" / "images" / person.name
        dest.mkdir(parents=True)
        for k, photo in enumerate(sorted(person.iterdir())[:5]):
            shutil.copy(photo, dest / photo.name)
            out.append(
                {
                    "path": f"images/{person.name}/{photo.name}",
                    "identity": person.name,
                    "split": SPLIT_OF[person.name],
                    "group": f"pair{i // 2}",
                    "forged": "yes" if k == 0 else "no",
                }
            )
    return out


def write_csv(path: Path, rows: list[dict], columns: tuple[str, ...]) -> str:
    """The table of ``rows`` with ``columns``; its path as data.source gives it."""
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return os.path.relpath(path, Path.cwd())


def run(*stages: str) -> None:
    for stage in stages:
        result = runner.invoke(app, [stage])
        assert result.exit_code == 0, f"{stage}: exit {result.exit_code}\n{result.output}"


def prepared() -> dict:
    """What prepare wrote: the arrays, identities.json, manifest.csv rows and summary.json."""
    root = Path("artifacts/prepared")
    with np.load(root / "meta.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["images"] = np.load(root / "images.npy")
    with (root / "manifest.csv").open(encoding="utf-8", newline="") as fh:
        manifest = list(csv.DictReader(fh))
    return {
        "arrays": arrays,
        "identities": read_json(root / "identities.json"),
        "manifest": manifest,
        "summary": read_json(root / "summary.json"),
    }


def assert_same_data(a: dict, b: dict) -> None:
    assert a["arrays"].keys() == b["arrays"].keys()
    for key in a["arrays"]:
        np.testing.assert_array_equal(a["arrays"][key], b["arrays"][key], err_msg=key)
    assert a["identities"] == b["identities"]


def test_a_manifest_without_split_prepares_as_its_folder_does(project, rows):
    """No split column: the seeded split by identity, exactly as the folder layout gives it."""
    set_params(project / "params.yaml", ["data.source=data/faces/images"])
    run("prepare")
    folder = prepared()

    table = write_csv(project / "data/faces/manifest.csv", rows, ("path", "identity"))
    set_params(project / "params.yaml", [f"data.source={table}", "data.layout=csv"])
    run("prepare", "mine")
    listed = prepared()
    assert_same_data(folder, listed)
    assert [r["source"] for r in listed["manifest"]] == [
        "images/" + r["source"] for r in folder["manifest"]
    ]
    assert listed["summary"]["layout"] == "csv" and listed["summary"]["split_by"] == "identity"
    # a source outside data/ is fingerprinted with every file the table lists, not the table only
    from siamese.data.sources import source_fingerprint

    before = source_fingerprint(table)
    photo = project / "data/faces" / rows[0]["path"]
    photo.write_bytes(photo.read_bytes()[:-1] + b"\x00")
    assert source_fingerprint(table) != before


def test_a_split_column_is_honoured_and_the_manifest_trains(project, rows):
    table = write_csv(project / "data/faces/manifest.csv", rows, ("path", "identity", "split"))
    # the seed and fractions would split otherwise: the column decides
    set_params(
        project / "params.yaml",
        [f"data.source={table}", "seed=3", "data.val_fraction=0.4", "train.max_epochs=1"],
    )
    run("prepare", "mine", "train")
    out = prepared()
    assert out["identities"]["split"] == SPLIT_OF
    assert out["summary"]["split_by"] == "column"
    assert (out["summary"]["train_identities"], out["summary"]["val_identities"]) == (4, 2)
    assert {r["identity"]: r["split"] for r in out["manifest"]} == SPLIT_OF
    assert read_json(Path("artifacts/train_metrics.json"))  # trained and exported
    assert Path("artifacts/train").is_dir()


def test_a_parquet_manifest_prepares_the_same_as_the_csv(project, rows):
    """Group and forged columns too: groups drive data.split_by (auto: group), forged photos are
    flagged as the signatures layout flags them. Parquet holds typed columns (booleans here)."""
    columns = ("path", "identity", "group", "forged")
    table = write_csv(project / "data/faces/manifest.csv", rows, columns)
    set_params(project / "params.yaml", [f"data.source={table}"])
    run("prepare")
    from_csv = prepared()
    summary = from_csv["summary"]
    assert summary["split_by"] == "group" and summary["groups"] == 4, summary
    assert summary["forged_images"] == 8 and summary["layout"] == "csv", summary
    assert from_csv["arrays"]["forged"].sum() == 8

    frame = pd.DataFrame(rows)[list(columns)]
    frame["forged"] = frame["forged"] == "yes"
    frame.to_parquet(project / "data/faces/manifest.parquet")
    set_params(project / "params.yaml", ["data.source=data/faces/manifest.parquet"])
    run("prepare")
    from_parquet = prepared()
    assert_same_data(from_csv, from_parquet)
    assert from_parquet["manifest"] == from_csv["manifest"]


def test_parquet_without_pyarrow_names_the_missing_package(tmp_path, monkeypatch):
    pd.DataFrame({"path": ["a/1.png"], "identity": ["a"]}).to_parquet(tmp_path / "m.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    with pytest.raises(DatasetError, match="needs the pyarrow package, which is not installed"):
        read_manifest(tmp_path / "m.parquet")


def test_data_add_of_a_manifest_adds_its_folder(project, rows, tmp_path):
    """`siamese data add TABLE` versions the table's folder (where its images lie) and points
    data.source at the table in it."""
    outside = tmp_path / "team-data"
    shutil.move(project / "data" / "faces", outside)
    write_csv(outside / "people.csv", rows, ("path", "identity", "split"))
    result = runner.invoke(app, ["data", "add", str(outside / "people.csv"), "--name", "team"])
    assert result.exit_code == 0, result.output
    data = yaml.safe_load((project / "params.yaml").read_text())["data"]
    assert (data["source"], data["layout"]) == ("data/team/people.csv", "csv")
    assert (project / "data" / "team.dvc").is_file()
    run("prepare")
    summary = prepared()["summary"]
    assert summary["source_record"] == "data/team.dvc" and summary["split_by"] == "column"


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ("path,identity,group\na/1.png,a,g1\na/2.png,a,g2\n", "identity 'a' is in the groups 'g1'"),
        ("path,identity,group\na/1.png,a,\n", "row 1 (a/1.png): the group cell is empty"),
        ("path,identity,forged\na/1.png,a,maybe\n", "row 1 (a/1.png): forged is 'maybe'"),
        (
            "path,identity\nC:\\faces\\a.png,a\n",
            "row 1: the path 'C:\\\\faces\\\\a.png' is absolute",
        ),
        ("path,identity\n,a\n", "row 1: the path cell is empty"),
        ("path,identity\n", "lists no images (a header without rows)"),
        ("", "is empty; it needs a header row"),
        ("path,identity,path\na/1.png,a,b\n", "the column 'path' appears twice"),
        (b"path,identity\na/1.png,caf\xe9\n", "is not UTF-8 text"),
    ],
)
def test_a_table_is_checked_whole_before_any_image_is_read(tmp_path, table, says):
    path = tmp_path / "m.csv"
    path.write_bytes(table if isinstance(table, bytes) else table.encode())
    with pytest.raises(DatasetError) as err:
        read_manifest(path)
    assert says in str(err.value) and str(path) in str(err.value), str(err.value)
