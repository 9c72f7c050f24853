import pytest

from siamese.config import apply_overrides, load_params, validate_params
from siamese.errors import ParamsError
from siamese.params_file import set_params


def test_shipped_params_are_valid():
    p = load_params("params.yaml")
    assert p.train.loss in ("contrastive", "triplet")


@pytest.mark.parametrize(
    "raw, key, hint",
    [
        ({"train": {"los": "contrastive"}}, "train.los", "unknown key"),
        ({"trian": {}}, "trian", "unknown key"),
        (
            {"train": {"loss": "arcface"}},
            "train.loss",
            "allowed: contrastive, triplet, multi_similarity",
        ),
        ({"train": {"images_per_identity": 1}}, "train.images_per_identity", "K must be >= 2"),
        ({"train": {"margin": -0.5}}, "train.margin", "> 0"),
        ({"train": {"lr": float("nan")}}, "train.lr", "finite"),
        ({"train": {"lr": -1}}, "train.lr", "> 0"),
        ({"train": {"max_epochs": "ten"}}, "train.max_epochs", "integer"),
        ({"train": {"miner": "batch_hard"}}, "train", "does not work with loss"),
        ({"data": {"val_fraction": 0.6, "test_fraction": 0.5}}, "data", "< 1"),
        ({"augment": [{"name": "NoSuchTransform"}]}, "augment", "not an albumentations"),
        ({"augment": [{"name": "Affine", "params": {"bogus": 1}}]}, "augment", "Affine"),
        ({"evaluate": {"far_targets": [2.0]}}, "evaluate.far_targets", "(0, 1)"),
        ({"augment": "kosh"}, "augment", "unknown augment preset 'kosh'; allowed: none, koch"),
        ({"augment": 3}, "augment", "preset name"),
        ({"augment": [{"nam": "Affine"}]}, "augment.0.nam", "unknown key"),
        ({"data": {"layout": "nested"}}, "data.layout", "'grouped'"),
        ({"data": {"layout": "grouped", "identity_depth": 1}}, "data.identity_depth", ">= 2"),
        ({"data": {"layout": "signatures", "identity_depth": 2}}, "data.identity_depth", "1"),
        ({"data": {"split_by": "alphabet"}}, "data.split_by", "'group'"),
        (
            {"mine": {"skilled_forgery_pairs": -1}},
            "mine.skilled_forgery_pairs",
            "greater than or equal to 0",
        ),
    ],
)
def test_bad_params_name_the_key(raw, key, hint):
    with pytest.raises(ParamsError) as err:
        validate_params(raw)
    text = str(err.value)
    assert key in text and hint in text, text


def test_missing_params_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_overrides_parse_yaml_values():
    out = apply_overrides({"train": {"lr": 1}}, ["train.lr=0.5", "train.loss=triplet", "seed=3"])
    assert out == {"train": {"lr": 0.5, "loss": "triplet"}, "seed": 3}


def test_set_params_keeps_comments_and_rejects_bad_values(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("# top comment\ntrain:\n  lr: 0.1  # learning rate\n")
    set_params(f, ["train.max_epochs=3"])
    text = f.read_text()
    assert "# learning rate" in text and "max_epochs: 3" in text
    with pytest.raises(ParamsError, match="train.margin"):
        set_params(f, ["train.margin=-1"])
    assert "margin" not in f.read_text()  # a rejected override never reaches the file


def test_set_params_replaces_collections_repeatedly_without_corrupting_the_file(tmp_path):
    import shutil

    import yaml

    f = tmp_path / "params.yaml"
    shutil.copy("params.yaml", f)
    set_params(f, ["augment=[]", "train.max_epochs=2"])
    set_params(f, ["augment=[]", "train.loss=triplet", "train.miner=semi_hard"])
    set_params(f, ["augment=[{name: Affine, params: {rotate: 5}}]"])
    raw = yaml.safe_load(f.read_text())
    assert raw["augment"] == [{"name": "Affine", "params": {"rotate": 5}}]
    assert raw["train"]["loss"] == "triplet" and raw["train"]["max_epochs"] == 2
    assert "# P" in f.read_text()  # other comments survive


def test_koch_preset_is_a_named_augmentation():
    from siamese.data.augment import PRESETS, build_augment

    p = validate_params({"augment": "koch"})
    assert p.augment == "koch"  # the preset name is what MLflow records
    steps = PRESETS["koch"]
    assert [s.params.get("rotate") for s in steps][0] == (-10.0, 10.0)
    shear = steps[1].params["shear"]["x"][1]
    assert 16.6 < shear < 16.8  # tan(16.7 deg) = 0.3, Koch's shear coefficient
    assert steps[2].params["scale"]["x"] == (0.8, 1.2)
    assert steps[3].params["translate_px"]["x"] == (-2, 2)
    transform = build_augment("koch", seed=0)
    assert len(transform.transforms) == 4


def test_default_data_params_keep_the_digits_run():
    d = validate_params({}).data
    assert (d.source, d.layout, d.identity_depth, d.split_by) == ("digits", "auto", None, "auto")
