import numpy as np
import pytest

from siamese.data.images import decode_image
from siamese.data.sources import load_digits_dataset, load_folder_dataset
from siamese.data.split import split_groups, split_identities
from siamese.errors import BadImageError, DatasetError


def test_digits_are_the_real_sklearn_digits():
    ds = load_digits_dataset(16)
    assert ds.images.shape == (1797, 16, 16, 1) and ds.images.dtype == np.uint8
    assert len(set(ds.identities)) == 10
    assert len(set(ds.hashes)) > 1700  # real, mostly distinct images


def test_folder_dataset_reads_real_faces(small_faces):
    ds = load_folder_dataset(small_faces, 32)
    assert ds.images.shape == (40, 32, 32, 1)
    assert len(set(ds.identities)) == 8
    assert ds.sources[0].endswith(".pgm")


def test_missing_path_is_named(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_folder_dataset(tmp_path / "missing", 16)


def test_identity_with_one_image_is_named_or_skipped(small_faces):
    lonely = small_faces / "lonely"
    lonely.mkdir()
    photo = bytearray((small_faces / "s1" / "1.pgm").read_bytes())
    photo[-1] ^= 0xFF  # one pixel changed: not a duplicate of s1's photo
    (lonely / "1.pgm").write_bytes(bytes(photo))
    with pytest.raises(DatasetError, match="'lonely'.*1 image"):
        load_folder_dataset(small_faces, 16)
    ds = load_folder_dataset(small_faces, 16, on_small_identity="skip")
    assert ds.skipped["identities"] == ["lonely"] and "lonely" not in ds.identities


@pytest.mark.parametrize(
    "content, why", [(b"", "empty"), (b"this is text, not an image", "not a readable image")]
)
def test_bad_file_is_named_or_counted(small_faces, content, why):
    bad = small_faces / "s1" / "broken.png"
    bad.write_bytes(content)
    with pytest.raises(DatasetError, match=f"broken.png.*{why}"):
        load_folder_dataset(small_faces, 16)
    ds = load_folder_dataset(small_faces, 16, on_bad_image="skip")
    assert ds.skipped["images"] == ["s1/broken.png"]
    assert len(ds.images) == 40


def test_truncated_png_is_rejected(small_faces):
    from siamese.data.images import encode_png

    data = encode_png(np.zeros((20, 20), np.uint8))
    with pytest.raises(BadImageError):
        decode_image(data[: len(data) // 2], 16, "cut.png")


def test_split_is_identity_disjoint_and_seeded():
    idents = [f"id{i}" for i in range(20) for _ in range(3)]
    a = split_identities(idents, 0.2, 0.2, seed=1)
    assert a == split_identities(list(reversed(idents)), 0.2, 0.2, seed=1)
    assert a != split_identities(idents, 0.2, 0.2, seed=2)
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 12, "val": 4, "test": 4}


def test_too_few_identities():
    with pytest.raises(DatasetError, match="too few identities.*found 5"):
        split_identities([f"i{i}" for i in range(5)], 0.2, 0.2, 0)


def _zip_dir(folder, zip_path, top=None):
    import zipfile

    with zipfile.ZipFile(zip_path, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                rel = f.relative_to(folder).as_posix()
                zf.write(f, f"{top}/{rel}" if top else rel)
    return zip_path


@pytest.mark.parametrize("top", [None, "faces"])
def test_zip_of_identity_folders_reads_like_the_folder(small_faces, tmp_path, top):
    folder = load_folder_dataset(small_faces, 16)
    zipped = load_folder_dataset(_zip_dir(small_faces, tmp_path / "faces.zip", top), 16)
    assert zipped.layout == "flat" and zipped.identities == folder.identities
    assert np.array_equal(zipped.images, folder.images) and zipped.hashes == folder.hashes


def _grouped(small_faces, root):
    """The 8 real identities filed under 4 groups: root/<group>/<identity>/<image>."""
    import shutil

    for i, ident in enumerate(sorted(p for p in small_faces.iterdir() if p.is_dir())):
        shutil.copytree(ident, root / f"group{i // 2}" / ident.name)
    return root


def test_grouped_layout_names_identities_by_group(small_faces, tmp_path):
    ds = load_folder_dataset(_grouped(small_faces, tmp_path / "g"), 16)
    assert ds.layout == "grouped" and len(set(ds.identities)) == 8
    assert set(ds.groups) == {"group0", "group1", "group2", "group3"}
    assert all(i.startswith(g + "/") for i, g in zip(ds.identities, ds.groups, strict=True))
    # the same tree read as flat identity folders does not fit
    with pytest.raises(DatasetError, match="does not fit data.layout flat"):
        load_folder_dataset(tmp_path / "g", 16, layout="flat")


def test_mixed_depths_ask_for_the_layout(small_faces):
    import shutil

    (small_faces / "extra" / "deeper").mkdir(parents=True)
    shutil.copy(small_faces / "s1" / "1.pgm", small_faces / "extra" / "deeper" / "1.pgm")
    with pytest.raises(DatasetError, match="different depths.*set data.layout"):
        load_folder_dataset(small_faces, 16)


def test_signature_layout_flags_forgeries(small_faces, tmp_path):
    import shutil

    root = tmp_path / "sig"
    writers = sorted(p for p in small_faces.iterdir() if p.is_dir())[:3]
    for w in writers:
        imgs = sorted(w.iterdir())
        for kind, part in (("genuine", imgs[:3]), ("forged", imgs[3:])):
            (root / w.name / kind).mkdir(parents=True)
            for img in part:
                shutil.copy(img, root / w.name / kind / img.name)
    ds = load_folder_dataset(root, 16)
    assert ds.layout == "signatures" and len(set(ds.identities)) == 3
    assert sum(ds.forged) == 6 and len(ds.images) == 15
    assert all(("/forged/" in s) == f for s, f in zip(ds.sources, ds.forged, strict=True))


def test_group_split_holds_out_whole_groups_and_groups_never_cross():
    group_of = {f"a{g}/c{c}": f"a{g}" for g in range(10) for c in range(3 + g % 4)}
    a = split_groups(group_of, 0.2, 0.2, seed=1)
    assert a == split_groups(dict(reversed(group_of.items())), 0.2, 0.2, seed=1)
    split_of_group: dict[str, set[str]] = {}
    for ident, s in a.items():
        split_of_group.setdefault(group_of[ident], set()).add(s)
    assert all(len(v) == 1 for v in split_of_group.values())  # no group spans two splits
    held = [g for g, v in split_of_group.items() if v != {"train"}]
    assert len(held) == 4  # 2 whole groups each for val and test
    with pytest.raises(DatasetError, match="at least 3 groups"):
        split_groups({"a/1": "a", "a/2": "a", "b/1": "b"}, 0.2, 0.2, 0)


def test_images_beside_the_identity_folders_are_ignored(small_faces):
    (small_faces / "preview.pgm").write_bytes((small_faces / "s1" / "1.pgm").read_bytes())
    ds = load_folder_dataset(small_faces, 16)
    assert len(ds.images) == 40 and "preview.pgm" not in ds.sources


def test_rotation_classes_add_rotated_training_identities_only(project, small_faces):
    from siamese import paths
    from siamese.data.artifacts import PreparedData
    from siamese.params_file import set_params
    from siamese.stages.prepare import run_prepare

    params = set_params(
        "params.yaml", [f"data.source={small_faces}", "data.rotation_classes=[90, 270]"]
    )
    summary = run_prepare(params, paths.PREPARED)
    data = PreparedData(paths.PREPARED)
    import json

    ids = json.loads((paths.PREPARED / "identities.json").read_text())
    train = [n for n, s in ids["split"].items() if s == "train" and "@rot" not in n]
    rotated = [n for n in ids["names"] if "@rot" in n]
    assert sorted(rotated) == sorted(f"{n}@rot{d}" for n in train for d in (90, 270))
    assert all(ids["split"][n] == "train" for n in rotated)  # val/test never rotated
    assert summary["rotated_images"] == 2 * 5 * len(train)
    # a rotated identity's images are its source identity's images turned by 90 degrees
    names = ids["names"]
    src = data.images[data.labels == names.index(train[0])]
    rot = data.images[data.labels == names.index(f"{train[0]}@rot90")]
    np.testing.assert_array_equal(rot, np.rot90(src, 1, axes=(1, 2)))


def test_rotation_classes_are_validated():
    from siamese.config import validate_params
    from siamese.errors import ParamsError

    with pytest.raises(ParamsError, match="data.rotation_classes"):
        validate_params({"data": {"rotation_classes": [45]}})


def test_the_same_image_under_two_identities_in_a_zip(small_faces, tmp_path):
    import shutil

    shutil.copy(small_faces / "s1" / "1.pgm", small_faces / "s10" / "copy.pgm")
    archive = _zip_dir(small_faces, tmp_path / "faces.zip", "faces")
    with pytest.raises(DatasetError) as err:
        load_folder_dataset(archive, 16)
    assert f"{archive}:faces/s1/1.pgm (identity 's1')" in str(err.value)
    assert f"{archive}:faces/s10/copy.pgm (identity 's10')" in str(err.value)
    kept = load_folder_dataset(archive, 16, on_duplicate_image="keep")
    assert len(kept.images) == 41 and kept.skipped["duplicates"] == []
    ds = load_folder_dataset(archive, 16, on_duplicate_image="skip")
    assert ds.skipped["duplicates"] == ["faces/s1/1.pgm", "faces/s10/copy.pgm"]
    assert len(ds.images) == 39 and "faces/s1/1.pgm" not in ds.sources


def test_an_identity_left_too_small_by_duplicates_says_so(small_faces):
    import shutil

    (small_faces / "twin").mkdir()
    for name in ("1.pgm", "10.pgm"):
        shutil.copy(small_faces / "s1" / name, small_faces / "twin" / name)
    with pytest.raises(DatasetError, match="'twin'.*0 image.*after leaving out 2 duplicate"):
        load_folder_dataset(small_faces, 16, on_duplicate_image="skip")
    ds = load_folder_dataset(small_faces, 16, on_duplicate_image="skip", on_small_identity="skip")
    assert ds.skipped["identities"] == ["twin"] and len(ds.skipped["duplicates"]) == 4
    assert sorted(set(ds.identities)) == sorted(p.name for p in small_faces.iterdir())[:-1]


def test_a_copy_within_an_identity_is_used_once_keeping_the_genuine_signature(svc2004, tmp_path):
    import shutil

    root = tmp_path / "sigs"
    for writer in sorted(p for p in svc2004.iterdir() if p.is_dir())[:6]:
        for kind in ("genuine", "forged"):
            (root / writer.name / kind).mkdir(parents=True)
            for img in sorted((writer / kind).iterdir())[:3]:
                shutil.copy(img, root / writer.name / kind / img.name)
    writer = sorted(p.name for p in root.iterdir())[0]
    genuine = sorted((root / writer / "genuine").iterdir())[0]
    shutil.copy(genuine, root / writer / "forged" / "copy.png")  # read before genuine/
    ds = load_folder_dataset(root, 16)
    assert ds.skipped["copies"] == [f"{writer}/forged/copy.png"]
    assert f"{writer}/genuine/{genuine.name}" in ds.sources
    assert f"{writer}/forged/copy.png" not in ds.sources
    # a gallery (drop_copies=False) keeps every file
    every = load_folder_dataset(root, 16, drop_copies=False)
    assert f"{writer}/forged/copy.png" in every.sources and every.skipped["copies"] == []


def test_an_exif_orientation_is_applied_by_the_one_decoder():
    """decode_image (prepare, data add, galleries, verify and the served model) shows a photo
    taken with the camera turned upright: dark top, bright bottom, not dark left, bright right."""
    from tests.helpers.images import exif_rotated_jpeg

    upright = np.repeat(np.array([0, 255], np.uint8), 24)[:, None].repeat(32, axis=1)
    img = decode_image(exif_rotated_jpeg(upright), 16).astype(int)
    assert img[:5].mean() < 40 and img[-5:].mean() > 215, img
    assert abs(img[:, :5].mean() - img[:, -5:].mean()) < 20, img
