import pytest

from siamese.io import atomic_dir, atomic_write_bytes, read_json, write_json


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("stage died")
    assert (out / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no scratch left behind


def test_atomic_write_and_json_roundtrip(tmp_path):
    write_json(tmp_path / "x" / "m.json", {"b": 1, "a": [1.5]})
    assert read_json(tmp_path / "x" / "m.json") == {"a": [1.5], "b": 1}
    atomic_write_bytes(tmp_path / "x" / "m.json", b"{}")
    assert read_json(tmp_path / "x" / "m.json") == {}
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["m.json"]
