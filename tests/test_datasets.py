"""The real benchmark datasets in ../shared/data (Omniglot, AT&T faces, SVC2004 signatures),
read in place, and the checksum-verified downloader (served from a local file:// URL)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from siamese.config import validate_params
from siamese.data.sources import load_source


def test_omniglot_zip_loads_every_character_grouped_by_alphabet(omniglot_zip):
    ds = load_source(str(omniglot_zip), 16)
    # 19,280 drawings, two of them byte-identical (Braille character01): that one is used once
    assert ds.layout == "grouped" and ds.images.shape == (19279, 16, 16, 1)
    assert ds.skipped["copies"] == ["images_background/Braille/character01/0192_19.png"]
    assert len(set(ds.identities)) == 964 and len(set(ds.groups)) == 30
    assert ds.identities[0] == "Alphabet_of_the_Magi/character01"
    assert ds.sources[0].startswith("images_background/Alphabet_of_the_Magi/character01/")
    assert all(i.split("/")[0] == g for i, g in zip(ds.identities, ds.groups, strict=True))
    assert ds.images[0].max() == 255 and ds.images[0].min() < 128  # dark strokes on white


def test_att_faces_load_as_thirty_people(att_faces):
    ds = load_source(str(att_faces), 16)
    assert ds.layout == "flat" and len(ds.images) == 300
    assert ds.skipped["ignored"] == ["README"]  # the dataset's own README: counted, not read
    assert len(set(ds.identities)) == 30 and not ds.has_groups and not any(ds.forged)


def test_svc2004_writers_are_identities_and_forgeries_are_flagged(svc2004):
    ds = load_source(str(svc2004), 16)
    assert ds.layout == "signatures" and len(ds.images) == 1200
    assert len(set(ds.identities)) == 30 and sum(ds.forged) == 600
    forged_of = {}
    for ident, f in zip(ds.identities, ds.forged, strict=True):
        forged_of.setdefault(ident, []).append(f)
    assert all(sum(v) == 20 and len(v) == 40 for v in forged_of.values())


def _prepare_and_mine(source, tmp_path, monkeypatch, extra=None):
    from siamese.stages.mine import run_mine
    from siamese.stages.prepare import run_prepare

    monkeypatch.chdir(tmp_path)
    raw = {
        "data": {"source": str(source), "image_size": 16, **(extra or {})},
        "mine": {"val_pairs": 200, "test_pairs": 400, "train_pairs": 200},
    }
    params = validate_params(raw)
    prepared = run_prepare(params, tmp_path / "prepared")
    mined = run_mine(params, tmp_path / "prepared", tmp_path / "pairs")
    return params, prepared, mined


def _pairs(tmp_path, split):
    with np.load(tmp_path / "pairs" / f"{split}.npz") as z:
        return {k: z[k] for k in z.files}


def test_svc2004_forgeries_are_never_positives_and_test_pairs_hold_skilled_forgeries(
    svc2004, tmp_path, monkeypatch
):
    from siamese.data.artifacts import PreparedData
    from siamese.training.datamodule import SiameseDataModule

    params, prepared, mined = _prepare_and_mine(svc2004, tmp_path, monkeypatch)
    assert prepared["forged_images"] == 600 and prepared["split_by"] == "identity"
    data = PreparedData(tmp_path / "prepared")
    assert data.forged.dtype == bool and data.forged.sum() == 600
    assert data.groups.dtype == np.int64 and (data.groups == -1).all()
    assert json.loads((tmp_path / "prepared" / "identities.json").read_text())["groups"] == []
    for split in ("train", "val", "test"):
        p = _pairs(tmp_path, split)
        assert set(p) == {"a", "b", "y", "kind"} and p["kind"].dtype == np.int8
        pos = p["y"] == 1
        assert not data.forged[p["a"][pos]].any() and not data.forged[p["b"][pos]].any()
        assert np.array_equal(pos, p["kind"] == 0)
        random_neg = p["kind"] == 1
        assert (data.labels[p["a"]] != data.labels[p["b"]])[random_neg].all()
        assert not data.forged[np.r_[p["a"][random_neg], p["b"][random_neg]]].any()
    for split in ("val", "test"):
        p = _pairs(tmp_path, split)
        skilled = p["kind"] == 2
        assert skilled.sum() == mined[f"{split}_skilled_forgery"] > 0
        assert (p["y"][skilled] == 0).all()
        assert (data.labels[p["a"]] == data.labels[p["b"]])[skilled].all()
        assert not data.forged[p["a"][skilled]].any() and data.forged[p["b"][skilled]].all()
    assert not (_pairs(tmp_path, "train")["kind"] == 2).any()
    # the P x K sampler never draws a forgery: it is no positive of its writer
    dm = SiameseDataModule(params, tmp_path / "prepared", tmp_path / "pairs")
    dm.setup("fit")
    drawn = np.concatenate(list(dm.train_dataloader().batch_sampler))
    assert not data.forged[drawn].any() and set(data.split[drawn]) == {0}


def test_omniglot_split_holds_out_whole_alphabets(omniglot_zip, tmp_path, monkeypatch):
    from siamese.data.artifacts import PreparedData

    _, prepared, _ = _prepare_and_mine(omniglot_zip, tmp_path, monkeypatch)
    assert prepared["split_by"] == "group" and prepared["groups"] == 30
    assert (prepared["train_groups"], prepared["val_groups"], prepared["test_groups"]) == (
        18,
        6,
        6,
    )
    data = PreparedData(tmp_path / "prepared")
    assert data.groups.dtype == np.int64 and not data.forged.any()
    for g in np.unique(data.groups):
        assert len(np.unique(data.split[data.groups == g])) == 1  # no alphabet spans two splits
    for label in np.unique(data.labels):
        assert len(np.unique(data.split[data.labels == label])) == 1
    meta = json.loads((tmp_path / "prepared" / "identities.json").read_text())
    assert len(meta["groups"]) == 30 and len(meta["names"]) == 964
    assert meta["names"][data.labels[0]].split("/")[0] == meta["groups"][data.groups[0]]
    test = _pairs(tmp_path, "test")
    assert set(np.unique(test["kind"])) == {0, 1}


# ------------------------------------------------------------------------------------------
# downloader


def test_download_verifies_and_writes_atomically(omniglot_zip, tmp_path):
    from siamese.data.downloads import download

    url = omniglot_zip.as_uri()
    result = download("omniglot-background", tmp_path / "data", url=url)
    target = tmp_path / "data" / "images_background.zip"
    assert result["downloaded"] and target.read_bytes() == omniglot_zip.read_bytes()
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["images_background.zip"]
    again = download("omniglot-background", tmp_path / "data", url=url)
    assert not again["downloaded"] and again["sha256"] == result["sha256"]
    assert load_source(str(target), 8).images.shape[0] == 19279  # one copy used once


def test_download_checksum_mismatch_leaves_nothing(omniglot_zip, tmp_path):
    from siamese.data.downloads import download
    from siamese.errors import DownloadError

    tampered = tmp_path / "tampered.zip"
    tampered.write_bytes(omniglot_zip.read_bytes()[:-100])
    dest = tmp_path / "data"
    with pytest.raises(DownloadError, match="checksum mismatch for omniglot-background"):
        download("omniglot-background", dest, url=tampered.as_uri())
    assert list(dest.iterdir()) == []
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download("omniglot-background", dest, url=omniglot_zip.as_uri(), sha256="0" * 64)
    assert list(dest.iterdir()) == []
    with pytest.raises(DownloadError, match="unknown dataset 'mnist'"):
        download("mnist", dest)
    with pytest.raises(DownloadError, match="cannot download"):
        download("omniglot-background", dest, url=(tmp_path / "missing.zip").as_uri())
    assert list(dest.iterdir()) == []


def test_download_cli(omniglot_zip, tmp_path):
    from siamese.cli import app

    runner = CliRunner()
    dest = tmp_path / "data"
    args = ["data", "download", "omniglot-background", "--dest", str(dest)]
    bad = runner.invoke(app, [*args, "--url", omniglot_zip.as_uri(), "--sha256", "1" * 64])
    assert bad.exit_code == 1 and "checksum mismatch" in bad.output
    assert not dest.exists() or list(dest.iterdir()) == []
    ok = runner.invoke(app, [*args, "--url", omniglot_zip.as_uri()])
    assert ok.exit_code == 0, ok.output
    assert "downloaded" in ok.output and (dest / "images_background.zip").is_file()
    listing = runner.invoke(app, ["data", "list"])
    assert "omniglot-evaluation" in listing.output and "md5" in listing.output
