"""Colour and any shape: ``data.channels`` (1 | 3), ``data.image_size`` (S | [H, W]) and
``data.resize`` (stretch | pad | crop), from the one decoder through prepare, training, the
registered package and serving (``data add`` honouring the data.on_* choices: test_data_add.py)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from siamese.cli import app
from siamese.config import validate_params
from siamese.data.images import RESIZES, ImageSpec, decode_image, encode_png
from siamese.errors import ParamsError
from siamese.models.encoders import ENCODERS, SiameseEncoder, build_encoder, preprocess
from tests.helpers.datasets import lfw_subset

runner = CliRunner()


def png(arr: np.ndarray) -> bytes:
    return encode_png(np.asarray(arr, np.uint8))


# ---------------------------------------------------------------------------------------------
# resizing: exact shapes, aspect ratio, background


def wide_stroke(height: int = 40, width: int = 160, paper: int = 230) -> np.ndarray:
    """A wide 'signature': a dark horizontal bar across the middle of light paper."""
    img = np.full((height, width), paper, np.uint8)
    img[height // 2 - 2 : height // 2 + 2, width // 8 : width - width // 8] = 10
    return img


def test_every_resize_gives_exactly_the_configured_height_width_and_channels():
    for resize in RESIZES:
        for channels in (1, 3):
            for size in (16, [24, 48], [48, 24]):
                spec = ImageSpec.of(size, channels, resize)
                out = decode_image(png(wide_stroke()), spec)
                assert out.shape == spec.shape and out.dtype == np.uint8, (resize, size, out.shape)


def test_pad_keeps_the_aspect_ratio_and_letterboxes_with_the_images_own_background():
    # 40 x 160 into 64 x 64: scaled to 16 x 64, centred, 24 rows of paper above and below
    out = decode_image(png(wide_stroke(paper=230)), ImageSpec.of(64, 1, "pad"))[..., 0]
    assert (out[:24] == 230).all() and (out[-24:] == 230).all()  # the paper's own grey, not 0
    bar = np.flatnonzero(out.min(axis=1) < 100)
    assert 24 <= bar.min() and bar.max() < 40  # the stroke stays inside the 16-row band
    dark_cols = np.flatnonzero(out[32] < 100)
    assert dark_cols.min() <= 9 and dark_cols.max() >= 54  # still 3/4 of the width: not cut
    # a colour image is letterboxed with its own (per-channel) border colour
    rgb = np.zeros((20, 80, 3), np.uint8)
    rgb[...] = (200, 40, 90)
    rgb[8:12, 10:70] = (0, 0, 255)
    out = decode_image(png(rgb), ImageSpec.of(32, 3, "pad"))
    assert (out[:10] == (200, 40, 90)).all() and (out[-10:] == (200, 40, 90)).all()


def test_crop_keeps_the_aspect_ratio_and_cuts_the_centre():
    # 40 x 160 into 32 x 32: the short side fills 32 rows, the middle quarter of the width is kept
    img = np.zeros((40, 160), np.uint8)
    img[:, 60:100] = 255  # a white band at the centre, 40 columns of the 160
    out = decode_image(png(img), ImageSpec.of(32, 1, "crop"))[..., 0]
    assert out.shape == (32, 32)
    # the centre 40 columns of 160 become 32: the band fills the whole output (edges resampled)
    assert (out[:, 2:-2] == 255).all(), out
    # stretch squeezes the whole width in: the band is a quarter of it
    squeezed = decode_image(png(img), ImageSpec.of(32, 1, "stretch"))[..., 0]
    assert 6 <= (squeezed[16] > 128).sum() <= 10


def test_grayscale_is_expanded_and_transparency_composited_white_for_colour():
    gray = decode_image(png(np.full((10, 10), 77)), ImageSpec.of(8, 3))
    assert gray.shape == (8, 8, 3) and (gray == 77).all()
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent except the centre
    rgba[4:6, 4:6, 3] = 255
    out = decode_image(encode_png(rgba), ImageSpec.of(10, 3))
    assert (out[0, 0] == 255).all() and tuple(out[5, 5]) == (255, 0, 0)


def test_pad_and_crop_on_real_svc2004_signatures(svc2004):
    files = sorted((svc2004 / "user1" / "genuine").iterdir())[:3]
    for path in files:
        data = path.read_bytes()
        with Image.open(path) as im:
            w, h = im.size
        assert w > h  # signatures are wide
        for resize in ("pad", "crop"):
            spec = ImageSpec.of([32, 96], 1, resize)
            out = decode_image(data, spec, name=str(path))
            assert out.shape == (32, 96, 1)
        padded = decode_image(data, ImageSpec.of(64, 1, "pad"))[..., 0]
        # wide into square: whole rows of paper (the scan's white) above and below the ink
        band = round(64 * h / w)
        top = (64 - band) // 2
        assert top >= 4 and (padded[: top - 1] >= 250).all() and (padded[-(top - 1) :] >= 250).all()
        assert padded[top:-top].min() < 200  # the ink is kept (thin strokes, resampled)


# ---------------------------------------------------------------------------------------------
# encoders: any channels, any H x W


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoders_take_colour_and_wide_images(name):
    for size, channels in ((16, 3), ((24, 64), 1), ((40, 12), 3), ((8, 8), 1)):
        net = build_encoder(name, size, 8, channels=4, in_channels=channels)
        h, w = (size, size) if isinstance(size, int) else size
        x = torch.zeros((2, channels, h, w))
        assert net(x).shape == (2, 8)
    images = np.random.default_rng(0).integers(0, 255, (3, 24, 64, 3), dtype=np.uint8)
    x = preprocess(torch.from_numpy(images))
    assert x.shape == (3, 3, 24, 64) and x.is_contiguous()
    assert x[1, 2, 5, 7].item() == pytest.approx(images[1, 5, 7, 2] / 127.5 - 1.0, abs=1e-6)
    enc = SiameseEncoder(name, [24, 64], 8, 4, True, in_channels=3, resize="pad")
    assert enc.config["image_size"] == [24, 64] and enc.config["in_channels"] == 3
    assert enc.config["resize"] == "pad" and enc(x).shape == (3, 8)


# ---------------------------------------------------------------------------------------------
# augmentation


def test_colour_only_augmentations_work_on_three_channels_and_keep_the_shape():
    from siamese.data.augment import build_augment
    from siamese.training.datamodule import ImageDataset

    steps = [
        {"name": "ColorJitter", "params": {"brightness": 0.3, "hue": 0.1, "p": 1.0}},
        {"name": "HueSaturationValue", "params": {"p": 1.0}},
        {"name": "RGBShift", "params": {"p": 1.0}},
    ]
    params = validate_params({"data": {"channels": 3, "image_size": [16, 24]}, "augment": steps})
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 24, 3), dtype=np.uint8)
    ds = ImageDataset(images, np.arange(4), build_augment(params.augment, params.seed))
    x, _ = ds[1]
    assert x.shape == (3, 16, 24)
    plain = preprocess(torch.from_numpy(images[1:2]))[0]
    assert not torch.equal(x, plain)  # the colours changed
    # hue is a colour-only notion: the three channels change differently, not by one offset
    diff = (x - plain).flatten(1)
    assert not torch.allclose(diff[0], diff[1]) and not torch.allclose(diff[1], diff[2])


@pytest.mark.parametrize(
    ("step", "says"),
    [
        ({"name": "ToGray", "params": {"num_output_channels": 1}}, "into (16, 16)"),
        ({"name": "RandomCrop", "params": {"height": 8, "width": 8}}, "into (8, 8, 3)"),
    ],
)
def test_an_augmentation_that_changes_the_image_shape_is_refused_naming_the_step(step, says):
    with pytest.raises(ParamsError) as err:
        validate_params({"data": {"channels": 3, "image_size": 16}, "augment": [step]})
    msg = str(err.value)
    assert f"augment: augment[0] ({step['name']})" in msg and says in msg, msg


# ---------------------------------------------------------------------------------------------
# params


@pytest.mark.parametrize(
    ("data", "key", "says"),
    [
        ({"channels": 2}, "data.channels", "1 or 3"),
        ({"channels": "rgb"}, "data.channels", "1 or 3"),
        ({"image_size": 4}, "data.image_size", "8 to 512"),
        ({"image_size": 1024}, "data.image_size", "8 to 512"),
        ({"image_size": [32]}, "data.image_size", "[height, width]"),
        ({"image_size": [32, 600]}, "data.image_size", "[height, width]"),
        ({"image_size": "big"}, "data.image_size", "got 'big'"),
        ({"resize": "squash"}, "data.resize", "'stretch', 'pad' or 'crop'"),
        ({"image_size": [16, 32], "rotation_classes": [90]}, "data.rotation_classes", "square"),
    ],
)
def test_bad_colour_and_shape_params_name_the_key_and_the_allowed_values(data, key, says):
    with pytest.raises(ParamsError) as err:
        validate_params({"data": data})
    assert key in str(err.value) and says in str(err.value), str(err.value)


def test_bad_image_size_is_refused_by_a_stage_without_a_traceback(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["image_size"] = [16, 4]
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = runner.invoke(app, ["prepare"])
    assert result.exit_code == 2, result.output
    assert "data.image_size" in result.output and "Traceback" not in result.output


def test_digits_defaults_are_gray_stretch():
    params = validate_params({})
    assert params.data.image == ImageSpec(28, 28, 1, "stretch")
    wide = validate_params({"data": {"image_size": [16, 40], "channels": 3, "resize": "crop"}})
    assert wide.data.image == ImageSpec(16, 40, 3, "crop")


# ---------------------------------------------------------------------------------------------
# prepare -> package -> serving: one preprocessing


def svc_subset(svc2004: Path, dest: Path, writers: int = 6, per_kind: int = 3) -> Path:
    for writer in sorted(p.name for p in svc2004.iterdir() if p.is_dir())[:writers]:
        for kind in ("genuine", "forged"):
            (dest / writer / kind).mkdir(parents=True)
            for f in sorted((svc2004 / writer / kind).iterdir())[:per_kind]:
                shutil.copy(f, dest / writer / kind / f.name)
    return dest


@pytest.mark.parametrize(
    ("dataset", "image"),
    [
        ("svc2004", {"image_size": [24, 64], "resize": "pad"}),  # wide gray signatures
        ("lfw", {"image_size": [40, 32], "channels": 3, "resize": "crop"}),  # colour faces
    ],
)
def test_the_served_model_decodes_every_file_exactly_as_prepare_did(
    dataset, image, request, tmp_path, monkeypatch
):
    """Prepared with a non-square size, pad or crop, gray or colour: the served pyfunc, set up
    from the package's preprocessing.json, embeds each raw file (and answers a colour pair)
    exactly as the array prepare stored in images.npy."""
    from siamese.data.artifacts import PreparedData
    from siamese.models.loading import embed
    from siamese.registry.package import preprocessing_spec
    from siamese.registry.pyfunc import SiameseModel
    from siamese.stages.prepare import run_prepare

    source = request.getfixturevalue(dataset)
    if dataset == "lfw":
        root = lfw_subset(source, tmp_path / "faces", people=6, per_person=3)
    else:
        root = svc_subset(source, tmp_path / "sigs")
    monkeypatch.chdir(tmp_path)
    params = validate_params({"data": {"source": str(root), **image}})
    summary = run_prepare(params, tmp_path / "prepared")
    spec = params.data.image
    assert (summary["image_size"], summary["channels"], summary["resize"]) == (
        spec.size,
        spec.channels,
        spec.resize,
    )
    data = PreparedData(tmp_path / "prepared")
    assert data.images.shape[1:] == spec.shape
    torch.manual_seed(0)
    encoder = SiameseEncoder(
        "conv4", spec.size, 8, 4, True, in_channels=spec.channels, resize=spec.resize
    ).eval()
    package = preprocessing_spec(ImageSpec.from_config(encoder.config), None, chunk_images=4)
    assert package["channels"] == spec.channels and package["resize"] == spec.resize
    model = SiameseModel().setup(encoder, package, {"threshold": 0.5})
    assert model.image == spec
    manifest = pd.read_csv(tmp_path / "prepared" / "manifest.csv")
    files = [(root / s).read_bytes() for s in manifest["source"]]
    for raw, index in zip(files, manifest["index"], strict=True):
        assert np.array_equal(decode_image(raw, model.image), data.images[index])
    served = model.predict(None, pd.DataFrame({"image": files}), params={"mode": "embed"})
    direct = embed(encoder, data.images[manifest["index"].to_numpy()])
    np.testing.assert_allclose(np.stack(served["embedding"]), direct, rtol=1e-5, atol=1e-6)
    pair = model.predict(None, pd.DataFrame({"image_a": files[:3], "image_b": files[3:6]}))
    d = encoder.pair_distance(torch.from_numpy(direct[:3]), torch.from_numpy(direct[3:6]))
    np.testing.assert_allclose(pair["distance"], d.detach().numpy(), rtol=1e-5, atol=1e-6)
    # a package whose preprocessing disagrees with the encoder is refused on load
    with pytest.raises(ValueError, match="differs from the images the encoder was trained on"):
        SiameseModel().setup(encoder, {**package, "resize": "stretch"}, {"threshold": 0.5})


# ---------------------------------------------------------------------------------------------
# colour end to end on real LFW faces


COLOUR_PARAMS = [
    "data.channels=3",
    "data.image_size=[40, 32]",
    "data.resize=crop",
    "model.channels=8",
    "model.embedding_dim=16",
    "mine.val_pairs=40",
    "mine.test_pairs=40",
    "mine.train_pairs=40",
    "train.identities_per_batch=4",
    "train.images_per_identity=3",
    "train.batches_per_epoch=3",
    "train.max_epochs=1",
    "calibrate.bootstrap_resamples=0",
    "evaluate.bootstrap_resamples=0",
    "evaluate.kfold=0",
    "evaluate.oneshot_episodes=0",
    "register.model_name=lfw-colour",
    "augment=[{name: ColorJitter, params: {brightness: 0.2, hue: 0.05, p: 0.5}}, "
    "{name: HorizontalFlip, params: {p: 0.5}}]",
]


@pytest.mark.slow
def test_colour_lfw_prepares_trains_calibrates_evaluates_registers_and_serves(
    lfw, project, tmp_path, monkeypatch
):
    import mlflow

    from siamese.data.artifacts import PreparedData
    from siamese.models.loading import embed, load_encoder
    from siamese.params_file import set_params
    from siamese.registry.loading import load_served_model
    from tests.helpers.stages import run_all_stages

    monkeypatch.delenv("SIAMESE_MLFLOW_RUN_ID", raising=False)
    faces = lfw_subset(lfw, tmp_path / "lfw", people=24, per_person=4)
    params = set_params(project / "params.yaml", [f"data.source={faces}", *COLOUR_PARAMS])
    result = run_all_stages(params)
    assert result["aliases"][0] == "challenger"

    data = PreparedData("artifacts/prepared")
    assert data.images.shape == (96, 40, 32, 3)
    # real colour kept: the channels of a face photo differ
    assert np.abs(data.images[..., 0].astype(int) - data.images[..., 2]).mean() > 5
    encoder = load_encoder("artifacts/train")
    assert encoder.config["in_channels"] == 3 and encoder.config["image_size"] == [40, 32]

    model = load_served_model("models:/lfw-colour@challenger")
    pre = model.preprocessing
    assert (pre["image_size"], pre["channels"], pre["resize"]) == ([40, 32], 3, "crop")
    # a colour pair answered by the served pyfunc in process: the same embeddings as embedding
    # the prepared arrays directly, so serving decoded and resized exactly as training did
    manifest = pd.read_csv("artifacts/prepared/manifest.csv")
    rows = manifest.iloc[[0, 1, 5]]
    files = [(faces / s).read_bytes() for s in rows["source"]]
    out = model.predict(None, pd.DataFrame({"image": files}), params={"mode": "embed"})
    direct = embed(encoder, data.images[rows["index"].to_numpy()])
    np.testing.assert_allclose(np.stack(out["embedding"]), direct, rtol=1e-5, atol=1e-6)
    pair = model.predict(None, pd.DataFrame({"image_a": files[:2], "image_b": files[1:]}))
    d = encoder.pair_distance(torch.from_numpy(direct[:2]), torch.from_numpy(direct[1:]))
    np.testing.assert_allclose(pair["distance"], d.numpy(), rtol=1e-5, atol=1e-6)
    # the package as MLflow loads it for `mlflow models serve`
    pyfunc = mlflow.pyfunc.load_model("models:/lfw-colour@challenger")
    again = pyfunc.predict(pd.DataFrame({"image_a": files[:2], "image_b": files[1:]}))
    np.testing.assert_allclose(again["distance"], pair["distance"], rtol=1e-6)

    # verify, index and search (CLI) decode colour as the package says
    uri = "models:/lfw-colour@challenger"
    a, b = (faces / s for s in rows["source"][:2])
    result = runner.invoke(app, ["verify", str(a), str(b), "--model", uri, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["distance"] == pytest.approx(pair["distance"][0], rel=1e-6)
    result = runner.invoke(app, ["index", str(faces), "--model", uri, "--out", "gallery"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["count"] == 96
    result = runner.invoke(app, ["search", str(a), "--index", "gallery", "-k", "1", "--json"])
    assert result.exit_code == 0, result.output
    hit = json.loads(result.output)[0]
    assert hit["identity"] == rows["identity"].iloc[0] and hit["distance"] < 1e-5, hit

    # over HTTP (`mlflow models serve`), the colour pair is answered as in process
    from siamese.registry.tracking import tracking_uri
    from tests.helpers.servers import background, free_port, wait_http

    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri(),
        "PATH": str(mlflow_bin.parent) + os.pathsep + os.environ.get("PATH", ""),
    }
    cmd = [str(mlflow_bin), "models", "serve", "-m", uri, "--env-manager", "local"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    base, log = f"http://127.0.0.1:{port}", tmp_path / "serve.log"
    with background(cmd, log, env, grace=20) as proc:
        why = wait_http(f"{base}/ping", proc, log, timeout=120)
        assert not why, f"model server did not come up: {why}"
        records = [
            {"image_a": base64.b64encode(x).decode(), "image_b": base64.b64encode(y).decode()}
            for x, y in zip(files[:2], files[1:], strict=True)
        ]
        r = requests.post(
            f"{base}/invocations",
            data=json.dumps({"dataframe_records": records}),
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
    assert r.status_code == 200, r.text[:500]
    http = pd.DataFrame(r.json()["predictions"])["distance"]
    np.testing.assert_allclose(http, pair["distance"], rtol=1e-5, atol=1e-6)
