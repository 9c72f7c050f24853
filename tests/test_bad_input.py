"""The bad-input matrix: each bad input goes to the real stage through the real CLI
(``siamese prepare`` / ``siamese train``, in process) in a copy of a project whose good
``prepare`` and ``mine`` outputs already exist, and gets its documented behaviour:

- error: exit 2 with one ``error: ...`` line naming the file, identity or params key and what to
  do, and nothing under ``artifacts/`` changed, no scratch file left, no MLflow run recorded;
- skip (the user chose skipping): exit 0, the item counted in ``summary.json`` and named in
  ``skipped.json``;
- ok (accepted input): exit 0, the item in the manifest under its own name, with sensible pixels.

The data folder and params.yaml are never modified by a stage. README.md "Bad input" lists the
same behaviours."""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import hashlib
import os
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from siamese.cli import app
from siamese.data.sources import SKIP_KINDS
from siamese.io import read_json
from siamese.params_file import set_params
from tests.helpers.images import (
    corrupt_png,
    encode,
    exif_rotated_jpeg,
    gradient_16bit,
    png_header_only,
    reencode,
    rgba_square,
)
from tests.helpers.params import FACES_PARAMS, FAST_PARAMS
from tests.helpers.project import SHARED_DATA, make_project

runner = CliRunner()
DATA = "data/faces"  # data.source of the base project: 8 real AT&T identities x 5 images
IDENTITIES, PER_IDENTITY = 8, 5
LEFTOVERS = (".*.tmp", ".*.partial", ".*.old-*")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A project on real faces with its good prepare and mine outputs (made once)."""
    att = SHARED_DATA / "att_faces"
    if not att.is_dir():
        pytest.skip(f"real dataset not found at {att} (set SIAMESE_SHARED_DATA)")
    root = tmp_path_factory.mktemp("bad-input") / "project"
    proj = make_project(root, [*FAST_PARAMS, *FACES_PARAMS, f"data.source={DATA}"])
    for ident in sorted(p for p in att.iterdir() if p.is_dir())[:IDENTITIES]:
        (proj / DATA / ident.name).mkdir(parents=True)
        for img in sorted(ident.iterdir())[:PER_IDENTITY]:
            shutil.copy(img, proj / DATA / ident.name / img.name)
    with contextlib.chdir(proj):
        for stage in ("prepare", "mine"):
            result = runner.invoke(app, [stage])
            assert result.exit_code == 0, _explain(result)
    return proj


@pytest.fixture
def proj(base, tmp_path, monkeypatch) -> Path:
    copy = tmp_path / "project"
    shutil.copytree(base, copy, symlinks=True)
    monkeypatch.chdir(copy)
    return copy


# ---------------------------------------------------------------------------------- the inputs


def att(ident: str, n: int) -> list[bytes]:
    """The first ``n`` real photos of an AT&T identity the base project does not hold (s2-s9)."""
    return [p.read_bytes() for p in sorted((SHARED_DATA / "att_faces" / ident).iterdir())[:n]]


def put(proj: Path, rel: str, data: bytes) -> None:
    path = proj / DATA / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def add_file(rel: str, data: bytes | Callable[[], bytes]) -> Callable[[Path], None]:
    return lambda proj: put(proj, rel, data() if callable(data) else data)


def with_params(*overrides: str, then: Callable[[Path], None] | None = None):
    """Valid params overrides (written like `siamese run --set`), after an optional setup."""

    def setup(proj: Path) -> None:
        if then is not None:
            then(proj)
        set_params(proj / "params.yaml", list(overrides))

    return setup


def raw_params(key: str, value) -> Callable[[Path], None]:
    """params.yaml with ``key`` set to ``value`` as it is: no validation on the way in."""

    def setup(proj: Path) -> None:
        path = proj / "params.yaml"
        raw = yaml.safe_load(path.read_text())
        *parents, last = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[last] = value
        path.write_text(yaml.safe_dump(raw, sort_keys=False))

    return setup


def truncated_jpeg() -> bytes:
    data = reencode(att("s2", 1)[0], "JPEG")
    return data[: len(data) // 2]


def one_image_identity(proj: Path) -> None:
    put(proj, "s2/1.pgm", att("s2", 1)[0])


def empty_identity(proj: Path) -> None:
    (proj / DATA / "empty").mkdir()


def one_identity(proj: Path) -> None:
    for ident in (proj / DATA).iterdir():
        if ident.name != "s1":
            shutil.rmtree(ident)


def duplicate_across(proj: Path) -> None:
    shutil.copy(proj / DATA / "s1" / "1.pgm", proj / DATA / "s10" / "dup.pgm")


def duplicate_within(proj: Path) -> None:
    shutil.copy(proj / DATA / "s1" / "1.pgm", proj / DATA / "s1" / "again.pgm")


def identity_of_copies(proj: Path) -> None:
    """s2: one photo, twice: a single image once its copy is left out."""
    put(proj, "s2/a.pgm", att("s2", 1)[0])
    put(proj, "s2/b.pgm", att("s2", 1)[0])


def files_not_read(proj: Path) -> None:
    """An iPhone photo (HEIC: no decoder here), a note, and a photo beside the identity folders."""
    put(proj, "s1/IMG_0001.heic", b"\x00\x00\x00\x18ftypheic" + bytes(64))
    put(proj, "s1/notes.txt", b"taken in 1994\n")
    put(proj, "cover.png", reencode(att("s2", 1)[0]))


def zip_with(*entries: str) -> Callable[[Path], None]:
    """data.source: a zip of the faces plus entries (other photos) whose names normalise to an
    existing one, as zip tools that keep "./", "/" or "//" in names write them."""

    def setup(proj: Path) -> None:
        import zipfile

        archive = proj / "data" / "faces.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for path in sorted((proj / DATA).rglob("*.pgm")):
                zf.write(path, path.relative_to(proj / DATA).as_posix())
            for name, data in zip(entries, att("s2", len(entries)), strict=True):
                zf.writestr(name, data)
        set_params(proj / "params.yaml", ["data.source=data/faces.zip"])

    return setup


UPRIGHT = np.repeat(np.array([0, 255], np.uint8), 24)[:, None].repeat(32, axis=1)  # 48 x 32


def check_upright(proj: Path) -> None:
    """The EXIF-rotated photo is prepared upright: dark on top, bright below (stored as shot it
    would be dark left, bright right)."""
    img = image_of(proj, "s1/turned.jpg").astype(int)
    assert img.shape == (24, 24)
    assert img[:8].mean() < 40 and img[-8:].mean() > 215, img
    assert abs(img[:, :8].mean() - img[:, -8:].mean()) < 20, img


UNICODE_SOURCE = "data/caras de prueba ü"
UNICODE_IDENTITY = "José Ñoño"


def unicode_and_spaces(proj: Path) -> None:
    (proj / DATA).rename(proj / UNICODE_SOURCE)
    for i, data in enumerate(att("s3", 2), start=1):
        (proj / UNICODE_SOURCE / UNICODE_IDENTITY).mkdir(exist_ok=True)
        (proj / UNICODE_SOURCE / UNICODE_IDENTITY / f"foto {i}.png").write_bytes(reencode(data))
    set_params(proj / "params.yaml", [f"data.source={UNICODE_SOURCE}"])


def symlink(rel: str, target: str | Path) -> Callable[[Path], None]:
    return lambda proj: os.symlink(target, proj / DATA / rel)


def linked_identity(proj: Path) -> None:
    """s4 lives outside the dataset and is linked in (users do link their data folders)."""
    outside = proj.parent / "elsewhere" / "s4"
    outside.mkdir(parents=True)
    for i, data in enumerate(att("s4", 3)):
        (outside / f"{i}.pgm").write_bytes(data)
    os.symlink(outside, proj / DATA / "s4")


NON_UTF8 = b"caf\xe9.png"  # latin-1, not UTF-8


def non_utf8_name(proj: Path) -> None:
    path = os.fsencode(proj / DATA / "s1") + b"/" + NON_UTF8
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    except OSError as err:  # a file system that insists on UTF-8 names
        pytest.skip(f"cannot create a non-UTF-8 file name here: {err}")
    os.write(fd, (proj / DATA / "s1" / "1.pgm").read_bytes())
    os.close(fd)


MANIFEST = f"{DATA}/manifest.csv"


def with_manifest(
    edit: Callable[[list[dict[str, str]]], None] | None = None,
    columns: tuple[str, ...] = ("path", "identity"),
    then: Callable[[Path], None] | None = None,
) -> Callable[[Path], None]:
    """data.source: a CSV manifest (data.layout: csv) beside the faces, one row per face (path
    relative to the table, identity, and ``split`` / ``group`` when asked for), after ``edit``
    changed the rows and ``then`` the project."""

    def setup(proj: Path) -> None:
        rows = []
        for n, path in enumerate(sorted((proj / DATA).rglob("*.pgm"))):
            ident = path.parent.name
            split = ("train", "train", "train", "train", "val", "val", "test", "test")
            rows.append(
                {
                    "path": path.relative_to(proj / DATA).as_posix(),
                    "identity": ident,
                    "split": split[sorted(os.listdir(proj / DATA)).index(ident) % 8],
                    "group": f"g{n % 2}",
                }
            )
        if edit is not None:
            edit(rows)
        with (proj / MANIFEST).open("w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        set_params(proj / "params.yaml", [f"data.source={MANIFEST}", "data.layout=csv"])
        if then is not None:
            then(proj)

    return setup


def row(path: str, identity: str, split: str = "train") -> Callable[[list[dict]], None]:
    """Add a row (the 41st: 8 x 5 faces come first)."""
    return lambda rows: rows.append({"path": path, "identity": identity, "split": split})


def resplit(identity: str, split: str) -> Callable[[list[dict]], None]:
    """Every row of ``identity`` in ``split``."""
    return lambda rows: [r.update(split=split) for r in rows if r["identity"] == identity]


def cell(index: int, column: str, value: str) -> Callable[[list[dict]], None]:
    return lambda rows: rows[index].__setitem__(column, value)


# ------------------------------------------------------------------- checks of accepted input


def manifest(proj: Path) -> dict[str, dict[str, str]]:
    with (proj / "artifacts/prepared/manifest.csv").open(encoding="utf-8", newline="") as fh:
        return {row["source"]: row for row in csv.DictReader(fh)}


def image_of(proj: Path, source: str) -> np.ndarray:
    index = int(manifest(proj)[source]["index"])
    image = np.load(proj / "artifacts/prepared/images.npy", mmap_mode="r")[index]
    assert image.ndim == 3 and image.shape[-1] == 1, image.shape  # (H, W, C), grayscale
    return image[..., 0]


def check_rgba(proj: Path) -> None:
    assert manifest(proj)["s1/rgba.png"]["identity"] == "s1"
    img = image_of(proj, "s1/rgba.png").astype(int)
    # transparent background composited on white, the opaque square stays black
    assert img[:3, :3].min() >= 250 and img[-3:, -3:].min() >= 250, img
    assert img[10:14, 10:14].max() <= 5, img


def check_16bit(proj: Path) -> None:
    img = image_of(proj, "s1/deep.png").astype(int)
    row = img[12]
    assert row[0] <= 10 and row[-1] >= 245, row  # the whole 16-bit range maps to 0..255
    assert abs(row[12] - 128) <= 16, row  # scaled, not clipped to 0/255
    assert len(np.unique(row)) >= 16 and (np.diff(row) >= 0).all(), row


def check_images(n: int, *sources: str) -> Callable[[Path], None]:
    def check(proj: Path) -> None:
        rows = manifest(proj)
        assert len(rows) == n and all(s in rows for s in sources), sorted(rows)

    return check


def check_unicode(proj: Path) -> None:
    summary = read_json(proj / "artifacts/prepared/summary.json")
    assert summary["source"] == UNICODE_SOURCE and summary["identities"] == IDENTITIES + 1
    assert UNICODE_IDENTITY in read_json(proj / "artifacts/prepared/identities.json")["names"]
    rows = manifest(proj)
    for i in (1, 2):
        assert rows[f"{UNICODE_IDENTITY}/foto {i}.png"]["identity"] == UNICODE_IDENTITY


def check_linked(proj: Path) -> None:
    rows = manifest(proj)
    assert [r["source"] for r in rows.values() if r["identity"] == "s4"] == [
        "s4/0.pgm",
        "s4/1.pgm",
        "s4/2.pgm",
    ]


# --------------------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Case:
    setup: Callable[[Path], None]
    outcome: str  # "error" | "skip" | "ok"
    says: tuple[str, ...] = ()  # in the error message: the item, and what to do
    stage: str = "prepare"
    args: tuple[str, ...] = ()
    skipped: dict[str, list[str]] = field(default_factory=dict)  # outcome skip: what is named
    check: Callable[[Path], None] | None = None  # outcome ok / skip: the written output


def error(id: str, setup, *says: str, stage: str = "prepare", args: tuple[str, ...] = ()):
    """Exit 2 with an error naming the item and the fix (``says``); nothing written."""
    return pytest.param(Case(setup, "error", says, stage, args), id=id)


def skip(id: str, setup, check=None, **skipped: list[str]):
    """Exit 0 with ``skipped`` (kind -> items) counted in summary.json, named in skipped.json."""
    return pytest.param(Case(setup, "skip", skipped=skipped, check=check), id=id)


def ok(id: str, setup, check):
    """Exit 0, nothing skipped, and ``check`` holds for the written output."""
    return pytest.param(Case(setup, "ok", check=check), id=id)


N = IDENTITIES * PER_IDENTITY
BAD = "remove or replace it, or set data.on_bad_image: skip"
SMALL = "data.on_small_identity: skip"
CASES = [
    # unreadable files: named, with the fix; or skipped and counted when the user chose so
    error(
        "corrupt-png",
        add_file("s1/x.png", corrupt_png()),
        f"{DATA}/s1/x.png",
        "not a readable image",
        BAD,
    ),
    skip(
        "corrupt-png-skipped",
        with_params("data.on_bad_image=skip", then=add_file("s1/x.png", corrupt_png())),
        check_images(N),
        images=["s1/x.png"],
    ),
    error(
        "truncated-jpeg",
        add_file("s1/cut.jpg", truncated_jpeg),
        f"{DATA}/s1/cut.jpg",
        "truncated",
        BAD,
    ),
    error(
        "zero-byte-file",
        add_file("s1/empty.png", b""),
        f"{DATA}/s1/empty.png",
        "empty file (0 bytes)",
        BAD,
    ),
    error(
        "text-named-jpg",
        add_file("s1/notes.jpg", b"notes, not a photo\n"),
        f"{DATA}/s1/notes.jpg",
        "not a readable image",
        BAD,
    ),
    error(
        "1x1-image",
        add_file("s1/dot.png", lambda: encode(np.zeros((1, 1), np.uint8))),
        f"{DATA}/s1/dot.png",
        "1x1 pixels, too small",
        BAD,
    ),
    error(
        "decompression-bomb",
        add_file("s1/bomb.png", png_header_only(60_000, 60_000)),
        f"{DATA}/s1/bomb.png",
        "decompression bomb",
        BAD,
    ),
    error(
        "dangling-symlink",
        symlink("s1/ghost.png", "missing.png"),
        f"{DATA}/s1/ghost.png",
        "broken symlink",
        "missing.png",
        BAD,
    ),
    error(
        "name-not-utf8", non_utf8_name, f"{DATA}/s1/caf\\xe9.png", "not valid UTF-8", "rename it"
    ),
    # unusual but valid images: accepted, decoded sensibly
    ok("rgba-on-white", add_file("s1/rgba.png", rgba_square), check_rgba),
    ok("16-bit-gray-scaled", add_file("s1/deep.png", gradient_16bit), check_16bit),
    ok("unicode-and-spaces-in-paths", unicode_and_spaces, check_unicode),
    ok(
        "exif-rotated-jpeg-upright",
        add_file("s1/turned.jpg", exif_rotated_jpeg(UPRIGHT)),
        check_upright,
    ),
    ok(
        "webp-image",
        add_file("s1/photo.webp", lambda: reencode(att("s2", 1)[0], "WEBP")),
        check_images(N + 1, "s1/photo.webp"),
    ),
    skip(
        "files-not-read-counted-and-named",
        files_not_read,
        check_images(N),
        ignored=["cover.png", "s1/IMG_0001.heic", "s1/notes.txt"],
    ),
    # identities
    error("identity-with-one-image", one_image_identity, "identity 's2'", "has 1 image(s)", SMALL),
    skip(
        "identity-with-one-image-skipped",
        with_params("data.on_small_identity=skip", then=one_image_identity),
        check_images(N),
        identities=["s2"],
    ),
    error(
        "empty-identity-folder",
        empty_identity,
        "identity 'empty'",
        "has 0 image(s)",
        "remove the folder",
        SMALL,
    ),
    error(
        "dataset-with-one-identity",
        one_identity,
        DATA,
        "found 1 ('s1')",
        "need at least 6",
        "add identity folders",
    ),
    error(
        "fractions-leave-no-training",
        with_params("data.val_fraction=0.45", "data.test_fraction=0.45"),
        DATA,
        "8 identities leave fewer than 2 for training",
        "lower data.val_fraction",
    ),
    error(
        "data-source-missing",
        with_params("data.source=data/facse"),
        "data/facse does not exist",
        "set data.source",
    ),
    # the same image under two identities: label noise that leaks between the splits
    error(
        "same-image-two-identities",
        duplicate_across,
        f"{DATA}/s1/1.pgm (identity 's1')",
        f"{DATA}/s10/dup.pgm (identity 's10')",
        "data.on_duplicate_image: skip",
    ),
    skip(
        "same-image-two-identities-skipped",
        with_params("data.on_duplicate_image=skip", then=duplicate_across),
        check_images(N - 1),
        duplicates=["s1/1.pgm", "s10/dup.pgm"],
    ),
    ok(
        "same-image-two-identities-kept",
        with_params("data.on_duplicate_image=keep", then=duplicate_across),
        check_images(N + 1, "s1/1.pgm", "s10/dup.pgm"),
    ),
    # the same image twice in one identity: used once (a positive pair of an image with itself)
    skip(
        "same-image-twice-in-one-identity-used-once",
        duplicate_within,
        check_images(N, "s1/1.pgm"),
        copies=["s1/again.pgm"],
    ),
    error(
        "identity-of-copies-only",
        identity_of_copies,
        "identity 's2'",
        "has 1 image(s) left after leaving out 1 duplicate(s)",
        SMALL,
    ),
    # zip entries whose names normalise to the same path: one would be read for both
    *(
        error(
            f"zip-entries-colliding-{kind}",
            zip_with(name),
            "data/faces.zip",
            f"'s1/1.pgm' and '{name}' are both s1/1.pgm",
            "remove one of them",
        )
        for kind, name in (
            ("leading-slash", "/s1/1.pgm"),
            ("dot-slash", "./s1/1.pgm"),
            ("double-slash", "s1//1.pgm"),
        )
    ),
    # symlinks: followed, but a folder is read once
    ok("symlinked-identity-folder", linked_identity, check_linked),
    error(
        "symlink-loop",
        symlink("s1/loop", ".."),
        "symlink loop",
        f"{DATA}/s1/loop -> ..",
        "remove the link",
    ),
    error(
        "folder-linked-twice",
        symlink("s1 again", "s1"),
        f"{DATA}/s1 again is a symlink",
        "remove the link",
    ),
    # a manifest table (data.layout: csv): each error names the table's row (or column)
    error(
        "manifest-row-missing-file",
        with_manifest(row("s1/nope.png", "s1")),
        f"{MANIFEST}, row 41: {DATA}/s1/nope.png",
        "No such file",
        BAD,
    ),
    skip(
        "manifest-row-missing-file-skipped",
        with_manifest(row("s1/nope.png", "s1"), then=with_params("data.on_bad_image=skip")),
        check_images(N),
        images=["s1/nope.png"],
    ),
    error(
        "manifest-row-not-an-image",
        with_manifest(row("s1/notes.txt", "s1"), then=add_file("s1/notes.txt", b"a note\n")),
        f"{MANIFEST}, row 41: {DATA}/s1/notes.txt",
        "not a readable image",
        BAD,
    ),
    error(
        "manifest-path-absolute",
        with_manifest(row("/etc/hostname", "s1")),
        f"{MANIFEST}, row 41",
        "'/etc/hostname' is absolute",
        "relative to the table's folder",
    ),
    error(
        "manifest-path-escapes-with-dotdot",
        with_manifest(row("s1/../../faces.png", "s1")),
        f"{MANIFEST}, row 41",
        "climbs out of the table's folder",
    ),
    error(
        "manifest-empty-identity",
        with_manifest(cell(2, "identity", "  ")),
        f"{MANIFEST}, row 3 (s1/2.pgm)",
        "the identity cell is empty",
    ),
    error(
        "manifest-missing-required-column",
        with_manifest(columns=("path", "person")),
        f"{MANIFEST} has no column 'identity'",
        "its columns: 'path', 'person'",
        "rename the column",
    ),
    error(
        "manifest-unknown-split",
        with_manifest(cell(5, "split", "training"), columns=("path", "identity", "split")),
        f"{MANIFEST}, row 6",
        "unknown split 'training'",
        "allowed: train, val, test",
    ),
    error(
        "manifest-split-leaks-an-identity",
        with_manifest(cell(4, "split", "test"), columns=("path", "identity", "split")),
        "identity 's1' is in the splits 'train' (row 1: s1/1.pgm) and 'test' (row 5: s1/4.pgm)",
        "give all of its rows one split",
    ),
    error(
        "manifest-split-too-few-for-val",
        with_manifest(resplit("s14", "train"), columns=("path", "identity", "split")),
        "the split column gives the val split 1 identit(ies) ('s13')",
        "mark more identities val",
    ),
    error(
        "manifest-layout-csv-on-a-folder",
        raw_params("data.layout", "csv"),
        "data.layout csv reads a table",
        f"got '{DATA}'",
    ),
    # params: the key named before any stage runs
    error(
        "lr-nan",
        raw_params("train.lr", float("nan")),
        "train.lr",
        "finite number > 0 (got nan)",
        stage="train",
    ),
    error(
        "lr-negative", raw_params("train.lr", -0.001), "train.lr", "> 0 (got -0.001)", stage="train"
    ),
    error(
        "margin-negative",
        raw_params("train.margin", -0.5),
        "train.margin",
        "> 0 (got -0.5)",
        stage="train",
    ),
    error(
        "unknown-loss",
        raw_params("train.loss", "arcface"),
        "train.loss",
        "unknown loss 'arcface'",
        "allowed: contrastive",
    ),
    error(
        "unknown-miner",
        raw_params("train.miner", "hardest"),
        "train.miner",
        "unknown miner 'hardest'",
        "allowed: batch_all",
    ),
    error(
        "unknown-encoder",
        raw_params("model.encoder", "resnet50"),
        "model.encoder",
        "unknown encoder 'resnet50'",
        "allowed: conv4, mlp, resnet12, resnet18, resnet34, or python:package.module:factory",
    ),
    error(
        "python-encoder-that-does-not-import",
        raw_params("model.encoder", "python:no_such_module_x:make"),
        "model.encoder 'python:no_such_module_x:make'",
        "cannot be imported",
        "Python path",
    ),
    error(
        "pretrained-not-a-state-dict",
        lambda proj: (
            (proj / "weights.pt").write_text("not weights"),
            set_params(proj / "params.yaml", ["model.pretrained=weights.pt"]),
        ),
        "model.pretrained: weights.pt is not a state dict",
        "weights_only=True",
        stage="train",
    ),
    error(
        "unknown-key",
        raw_params("train.lrr", 0.01),
        "train.lrr",
        "unknown key",
        "check the spelling",
    ),
    error(
        "missing-params-file",
        lambda proj: None,
        "params file nope.yaml not found",
        "--params",
        args=("--params", "nope.yaml"),
    ),
    error(
        "params-not-yaml",
        lambda proj: (proj / "params.yaml").write_text("train:\n  lr: [0.1\n  loss: contrastive\n"),
        "params file params.yaml is not valid YAML",
        "fix the syntax",
        '"params.yaml", line 3',
    ),
    error(
        "params-not-utf8",
        lambda proj: (proj / "params.yaml").write_bytes(b"\xff\xfet\x00r\x00"),
        "params file params.yaml cannot be read as UTF-8",
        "restore it",
    ),
    # params that fit no data: checked before training starts (and before any MLflow run)
    error(
        "K-larger-than-any-identity",
        with_params("train.images_per_identity=6"),
        "train.images_per_identity (K) is 6",
        "the largest has 5",
        "at most 5",
        stage="train",
    ),
]


def _explain(result) -> str:
    tb = "".join(traceback.format_exception(result.exception)) if result.exception else ""
    return f"exit {result.exit_code}\n{result.output}\n{tb}"


def snapshot(root: Path) -> dict[str, str]:
    """Every file (sha256), folder and symlink (target) under root, links not followed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = os.fsencode(path.relative_to(root)).decode("utf-8", "backslashreplace")
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = "folder"
    return out


def leftovers(root: Path) -> list[str]:
    return [
        str(Path(d) / n)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
        if any(fnmatch.fnmatch(n, pat) for pat in LEFTOVERS)
    ]


@pytest.mark.parametrize("case", CASES)
def test_bad_input(proj, case):
    case.setup(proj)
    data_before = snapshot(proj / "data")
    params_before = (proj / "params.yaml").read_bytes()
    artifacts_before = snapshot(proj / "artifacts")

    result = runner.invoke(app, [case.stage, *case.args])

    out = result.output
    # the inputs are never touched, and a stage never leaves a scratch file behind
    assert snapshot(proj / "data") == data_before
    assert (proj / "params.yaml").read_bytes() == params_before
    assert leftovers(proj / "artifacts") == []
    if case.outcome == "error":
        assert result.exit_code == 2, _explain(result)
        message = out[out.index("error: ") :]
        for text in case.says:
            assert text in message, message
        assert snapshot(proj / "artifacts") == artifacts_before  # nothing lost or half-written
        # the train stage checks its data before anything is recorded: no (failed) MLflow run
        assert not (proj / "mlflow.db").exists() and not (proj / "mlartifacts").exists()
        return
    assert result.exit_code == 0, _explain(result)
    summary = read_json(proj / "artifacts/prepared/summary.json")
    skipped = read_json(proj / "artifacts/prepared/skipped.json")
    for kind in SKIP_KINDS:
        named = case.skipped.get(kind, [])
        assert sorted(skipped[kind]) == sorted(named), skipped
        assert summary[f"skipped_{kind}"] == len(named), summary
    assert (case.outcome == "skip") == bool(case.skipped)
    # only prepare's output was replaced; the later stages' outputs are as they were
    after = snapshot(proj / "artifacts")
    assert {k: v for k, v in after.items() if not k.startswith("prepared")} == {
        k: v for k, v in artifacts_before.items() if not k.startswith("prepared")
    }
    if case.check is not None:
        case.check(proj)


# ------------------------------------------------- entries that would read without bounds
# A device, a FIFO, a huge file or a zip bomb is refused before it is read, naming the entry: run
# as a real `siamese prepare` process with a timeout and a memory bound (before the check, a
# link to /dev/zero grew the process by ~300 MB/s until killed and a FIFO blocked forever).

PEAK_RSS_BOUND_KB = 2_000_000  # the prepare process (torch imported) stays far below this


def _zip_dataset(proj: Path, bomb: bytes) -> None:
    """data.source: a zip of the same faces plus one image entry of ``bomb``."""
    import zipfile

    archive = proj / "data" / "faces.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted((proj / DATA).rglob("*.pgm")):
            zf.write(path, path.relative_to(proj / DATA).as_posix())
        zf.writestr("s1/bomb.png", bomb)
    set_params(proj / "params.yaml", ["data.source=data/faces.zip"])


UNBOUNDED = {
    "symlink-to-dev-zero": (
        lambda proj: (proj / DATA / "s1" / "zero.png").symlink_to("/dev/zero"),
        [f"{DATA}/s1/zero.png", "a character device (a symlink to /dev/zero)", "remove it"],
    ),
    "fifo": (
        lambda proj: os.mkfifo(proj / DATA / "s1" / "pipe.png"),
        [f"{DATA}/s1/pipe.png", "a FIFO (named pipe)", "not an image file"],
    ),
    "file-over-the-cap": (
        lambda proj: (
            set_params(proj / "params.yaml", ["data.max_file_bytes=20000"]),
            put(proj, "s1/big.png", os.urandom(50_000)),
        ),
        [f"{DATA}/s1/big.png", "50000 bytes, over the limit of 20000", "data.max_file_bytes"],
    ),
    "zip-bomb-entry": (
        lambda proj: _zip_dataset(proj, bytes(50_000_000)),
        ["data/faces.zip:s1/bomb.png", "refused as a zip bomb"],
    ),
    "zip-entry-over-the-cap": (
        lambda proj: (
            _zip_dataset(proj, os.urandom(300_000)),
            set_params(proj / "params.yaml", ["data.max_file_bytes=200000"]),
        ),
        ["data/faces.zip:s1/bomb.png", "300000 bytes, over the limit of 200000"],
    ),
}


@pytest.mark.parametrize("name", sorted(UNBOUNDED))
def test_entries_that_read_without_bounds_are_refused_before_reading(proj, name):
    import resource
    import subprocess
    import sys

    setup, says = UNBOUNDED[name]
    setup(proj)
    params_before = (proj / "params.yaml").read_bytes()
    artifacts_before = snapshot(proj / "artifacts")
    exe = Path(sys.executable).with_name("siamese")
    result = subprocess.run(
        [str(exe), "prepare"], cwd=proj, capture_output=True, text=True, timeout=300
    )
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr[result.stderr.index("error: ") :].split())
    for text in says:
        assert text in message, message
    assert "Traceback" not in result.stderr
    assert peak_kb < PEAK_RSS_BOUND_KB, peak_kb
    assert snapshot(proj / "artifacts") == artifacts_before
    assert (proj / "params.yaml").read_bytes() == params_before


def test_a_fifo_is_skipped_and_counted_when_bad_images_are_skipped(proj):
    set_params(proj / "params.yaml", ["data.on_bad_image=skip"])
    os.mkfifo(proj / DATA / "s1" / "pipe.png")
    result = runner.invoke(app, ["prepare"])
    assert result.exit_code == 0, _explain(result)
    skipped = read_json(proj / "artifacts/prepared/skipped.json")
    assert [s for s in skipped["images"] if "pipe.png" in s], skipped
    assert read_json(proj / "artifacts/prepared/summary.json")["skipped_images"] == 1
