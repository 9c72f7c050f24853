import numpy as np
import pytest

from siamese.data.images import BadImageError, decode_image
from siamese.data.sources import DatasetError, load_digits_dataset, load_folder_dataset
from siamese.data.split import split_identities


def test_digits_are_the_real_sklearn_digits():
    ds = load_digits_dataset(16)
    assert ds.images.shape == (1797, 16, 16) and ds.images.dtype == np.uint8
    assert len(set(ds.identities)) == 10
    assert len(set(ds.hashes)) > 1700  # real, mostly distinct images


def test_folder_dataset_reads_real_faces(small_faces):
    ds = load_folder_dataset(small_faces, 32)
    assert ds.images.shape == (40, 32, 32)
    assert len(set(ds.identities)) == 8
    assert ds.sources[0].endswith(".pgm")


def test_missing_path_is_named(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_folder_dataset(tmp_path / "missing", 16)


def test_identity_with_one_image_is_named_or_skipped(small_faces):
    lonely = small_faces / "lonely"
    lonely.mkdir()
    (lonely / "1.pgm").write_bytes((small_faces / "s1" / "1.pgm").read_bytes())
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
    from siamese.serving import encode_png

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
