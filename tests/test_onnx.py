"""The encoder as ONNX: export and parity for every built-in encoder and distance (the learned
head too), the checked export in every registered package, the onnx runtime of the served model,
verify / index / search, and ``siamese export``'s folder scoring a pair with onnxruntime alone
(no torch, no siamese) in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from siamese.cli import app
from siamese.config import validate_params
from siamese.data.artifacts import PreparedData
from siamese.data.images import ImageSpec, encode_png, resize_array
from siamese.errors import OnnxExportError, OnnxParityError, ParamsError
from siamese.io import read_json
from siamese.models.encoders import SiameseEncoder
from siamese.models.loading import embed, embedding_distances, save_encoder
from siamese.models.onnx import (
    INFO_FILE,
    PARITY_TOLERANCE,
    OnnxDistance,
    OnnxEncoder,
    export_onnx,
)
from siamese.params_file import set_params
from siamese.registry.loading import load_served_model
from siamese.registry.package import build_package, onnx_status, save_package
from siamese.registry.tracking import tracking_uri
from tests.helpers.params import FAST_PARAMS, QUICK
from tests.helpers.project import SHARED_DATA, make_project
from tests.helpers.servers import background, free_port, wait_http

NAME = "digits-onnx"
CALIBRATION = {"strategy": "eer", "threshold": 0.5, "probability": {"method": "none"}}
# a user's encoder with an operator ONNX has no translation for (singular values)
UNEXPORTABLE = """
import torch


class Spectral(torch.nn.Module):
    def __init__(self, channels, dim):
        super().__init__()
        self.proj = torch.nn.Linear(4, dim)

    def forward(self, x):
        m = torch.nn.functional.adaptive_avg_pool2d(x.mean(1, keepdim=True), 4)[:, 0]
        return self.proj(torch.linalg.svdvals(m))


def spectral(in_channels, image_size, embedding_dim):
    return Spectral(in_channels, embedding_dim)
"""


def real_images(n: int, height: int, width: int, channels: int) -> np.ndarray:
    """``n`` real pictures at the given shape: LFW faces for colour where the shared data has
    them, else scikit-learn's handwritten digits (grey, expanded to RGB for colour)."""
    spec = ImageSpec(height, width, channels)
    lfw = SHARED_DATA / "lfw" / "lfw"
    if channels == 3 and lfw.is_dir():
        from siamese.data.images import read_image

        files = sorted(lfw.glob("A*/*.jpg"))[:n]
        return np.stack([read_image(f, spec) for f in files])
    from sklearn.datasets import load_digits

    digits = load_digits().images[:n] / 16.0
    return np.stack([resize_array(d, spec) for d in digits])


def _trained_like(encoder: SiameseEncoder, channels: int, h: int, w: int) -> SiameseEncoder:
    """Batch-norm statistics moved away from their defaults (as training leaves them)."""
    encoder.train()
    with torch.no_grad():
        for _ in range(3):
            encoder(torch.randn(8, channels, h, w))
    return encoder.eval()


@pytest.mark.parametrize(
    ("encoder", "distance", "head", "channels", "size"),
    [
        ("conv4", "euclidean", None, 1, 28),
        ("conv4", "squared_euclidean", None, 1, 28),
        ("conv4", "cosine", None, 3, [24, 40]),
        ("conv4", "euclidean", "weighted_l1", 1, 28),  # Koch et al.'s learned head
        ("mlp", "euclidean", None, 1, 16),
        ("resnet12", "euclidean", None, 3, 32),
        ("resnet18", "cosine", None, 3, [32, 24]),
        # resnet34 is resnet18's code with more blocks: in the slow set
        pytest.param("resnet34", "euclidean", None, 1, 24, marks=pytest.mark.slow),
    ],
)
def test_every_builtin_encoder_and_distance_exports_with_parity(
    encoder, distance, head, channels, size, tmp_path
):
    torch.manual_seed(0)
    h, w = (size, size) if isinstance(size, int) else size
    args = {"widths": [8, 8, 16, 16]} if encoder.startswith("resnet") else None
    net = SiameseEncoder(
        encoder, size, 16, 8, True, distance, head, in_channels=channels, encoder_args=args
    )
    net = _trained_like(net, channels, h, w)
    images = real_images(24, h, w, channels)
    info = export_onnx(net, tmp_path, images)
    assert info["parity"]["max_abs_embedding_diff"] <= PARITY_TOLERANCE
    assert info["parity"]["max_abs_distance_diff"] <= PARITY_TOLERANCE
    assert info["metric"] == ("learned" if head else distance) and info["opset"] >= 17
    assert read_json(tmp_path / INFO_FILE) == info
    # the batch axis is dynamic: one image, and an odd count, give PyTorch's embeddings
    onnx_net = OnnxEncoder(tmp_path / "encoder.onnx")
    for n in (1, 7):
        got, want = onnx_net(images[:n]), embed(net, images[:n])
        assert got.shape == want.shape == (n, 16)
        np.testing.assert_allclose(got, want, atol=PARITY_TOLERANCE, rtol=0)
    # the distance graph is the model's own metric (the head's 1 - p(same) for a head)
    a, b = want[:6], want[1:7]
    np.testing.assert_allclose(
        OnnxDistance(tmp_path / "distance.onnx")(a, b),
        embedding_distances(net, a.astype(np.float64), b.astype(np.float64)),
        atol=1e-6,
        rtol=0,
    )


def test_an_export_outside_the_tolerance_is_refused_and_not_marked_checked(tmp_path):
    torch.manual_seed(0)
    net = _trained_like(SiameseEncoder("conv4", 24, 16, 8, True, in_channels=3), 3, 24, 24)
    # float32 kernels differ in the last bits between the runtimes: a zero tolerance fails
    with pytest.raises(OnnxParityError, match=r"difference of embeddings .*\(tolerance 0\)"):
        export_onnx(net, tmp_path, real_images(16, 24, 24, 3), tolerance=0.0)
    assert not (tmp_path / INFO_FILE).exists()


@pytest.fixture
def unexportable(tmp_path, monkeypatch) -> str:
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "spectral_encoders.py").write_text(UNEXPORTABLE)
    monkeypatch.syspath_prepend(str(folder))
    yield "python:spectral_encoders:spectral"
    sys.modules.pop("spectral_encoders", None)


def test_an_encoder_onnx_cannot_express_is_packaged_without_it_saying_why(unexportable, tmp_path):
    net = SiameseEncoder(unexportable, 16, 8, 4, True)
    (tmp_path / "train").mkdir()
    save_encoder(net.eval(), tmp_path / "train")
    images = real_images(8, 16, 16, 1)
    artifacts = build_package(
        tmp_path / "train", CALIBRATION, None, tmp_path / "pkg", onnx_sample=images
    )
    info = read_json(Path(artifacts["onnx"]) / INFO_FILE)
    assert info["exported"] is False and "aten._linalg_svd" in info["reason"], info
    assert not (tmp_path / "pkg" / "onnx" / "encoder.onnx").exists()
    assert onnx_status(artifacts).startswith("not exported: the encoder")
    # serving with onnx was asked for: registration fails, naming the way out
    with pytest.raises(OnnxExportError, match=r"serve.runtime: onnx, but .*serve.runtime: torch"):
        build_package(
            tmp_path / "train",
            CALIBRATION,
            None,
            tmp_path / "pkg2",
            runtime="onnx",
            onnx_sample=images,
        )


@pytest.mark.parametrize(
    ("serve", "says"),
    [
        ({"runtime": "tensorrt"}, "serve.runtime"),
        ({"runtime": "onnx", "export_onnx": False}, "serve.runtime: onnx needs serve.export_onnx"),
        ({"export_onnx": "sometimes"}, "serve.export_onnx"),
    ],
)
def test_bad_serve_runtime_params_name_the_key(serve, says):
    with pytest.raises(ParamsError) as err:
        validate_params({"serve": serve})
    assert says in str(err.value), str(err.value)


# --------------------------------------------------------------------------- registered model


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A digits model trained and registered (serve.export_onnx on, the default) in a fresh
    project; MLFLOW_TRACKING_URI points at its store for the module's tests."""
    from tests.helpers.stages import run_register_stage, run_stages_until_evaluate

    root = tmp_path_factory.mktemp("onnx")
    overrides = [*(q for q in QUICK if not q.startswith("serve.")), f"register.model_name={NAME}"]
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("SIAMESE_MLFLOW_RUN_ID", raising=False)
        project = make_project(root / "project", FAST_PARAMS)
        mp.chdir(project)
        params = set_params(project / "params.yaml", overrides)
        assert params.serve.export_onnx and params.serve.runtime == "torch"
        run_stages_until_evaluate(params)
        reg = run_register_stage(params)
        uri = tracking_uri()
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        data = PreparedData(project / "artifacts" / "prepared")
        test = data.indices("test")[:12]
        images = np.array(data.images[test])
        yield {
            "project": project,
            "registration": reg,
            "tracking_uri": uri,
            "model_uri": f"models:/{NAME}/{reg['version']}",
            "images": images,
            "pngs": [encode_png(i) for i in images],
        }


def _pairs(registered) -> pd.DataFrame:
    pngs = registered["pngs"]
    return pd.DataFrame({"image_a": pngs[:6], "image_b": pngs[6:12]})


def test_registered_package_carries_a_checked_onnx_export(registered, tmp_path):
    reg = registered["registration"]
    assert reg["onnx"].startswith("exported (opset"), reg["onnx"]
    client = mlflow.MlflowClient(registered["tracking_uri"])
    mv = client.get_model_version(NAME, reg["version"])
    assert mv.tags["siamese.onnx"] == reg["onnx"]
    assert client.get_run(reg["run_id"]).data.tags["siamese.onnx"] == reg["onnx"]
    local = Path(mlflow.artifacts.download_artifacts(registered["model_uri"], dst_path=tmp_path))
    onnx_dir = local / "artifacts" / "onnx"
    assert {p.name for p in onnx_dir.iterdir()} == {"encoder.onnx", "distance.onnx", INFO_FILE}
    info = read_json(onnx_dir / INFO_FILE)
    # checked on real images: the validation pairs' (64 distinct digits)
    assert info["parity"]["images"] == 64
    assert info["parity"]["max_abs_embedding_diff"] <= PARITY_TOLERANCE
    assert info["input_shape"] == ["batch", 16, 16, 1] and info["input_dtype"] == "uint8"
    checksums = read_json(local / "artifacts" / "checksums.json")
    assert "onnx/encoder.onnx" in json.dumps(checksums)  # covered by the integrity check
    requirements = (local / "requirements.txt").read_text()
    assert "onnxruntime==" in requirements
    pre = read_json(local / "artifacts" / "preprocessing.json")
    assert pre["runtime"] == "torch"


def test_the_onnx_runtime_answers_as_torch_in_process(registered):
    torch_model = load_served_model(registered["model_uri"])
    onnx_model = load_served_model(registered["model_uri"], runtime="onnx")
    assert (torch_model.runtime, onnx_model.runtime) == ("torch", "onnx")
    assert isinstance(onnx_model.network, OnnxEncoder)
    frame = _pairs(registered)
    by_torch, by_onnx = torch_model.predict(None, frame), onnx_model.predict(None, frame)
    np.testing.assert_allclose(by_onnx["distance"], by_torch["distance"], atol=PARITY_TOLERANCE)
    np.testing.assert_allclose(by_onnx["probability"], by_torch["probability"], atol=1e-3)
    assert list(by_onnx["match"]) == list(by_torch["match"])
    embeddings = onnx_model.predict(
        None, pd.DataFrame({"image": registered["pngs"]}), params={"mode": "embed"}
    )
    np.testing.assert_allclose(
        np.stack(embeddings["embedding"]),
        torch_model.embeddings(registered["images"]),
        atol=PARITY_TOLERANCE,
    )


def test_verify_index_and_search_take_the_runtime(registered, tmp_path):
    runner = CliRunner()
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(registered["pngs"][0])
    b.write_bytes(registered["pngs"][1])
    uri = registered["model_uri"]
    answers = {}
    for runtime in ("torch", "onnx"):
        res = runner.invoke(app, ["verify", str(a), str(b), "--model", uri, "--runtime", runtime])
        assert res.exit_code == 0, res.output
        res = runner.invoke(
            app, ["verify", str(a), str(b), "--model", uri, "--runtime", runtime, "--json"]
        )
        answers[runtime] = json.loads(res.output)
    assert answers["onnx"]["runtime"] == "onnx"
    assert abs(answers["onnx"]["distance"] - answers["torch"]["distance"]) <= PARITY_TOLERANCE
    assert answers["onnx"]["match"] == answers["torch"]["match"]
    # a gallery embedded by onnxruntime, searched with the onnx runtime
    gallery = tmp_path / "faces"
    for i, png in enumerate(registered["pngs"]):
        (gallery / f"id{i % 4}").mkdir(parents=True, exist_ok=True)
        (gallery / f"id{i % 4}" / f"{i}.png").write_bytes(png)
    res = runner.invoke(
        app,
        ["index", str(gallery), "--model", uri, "--out", str(tmp_path / "g"), "--runtime", "onnx"],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, ["search", str(a), "--index", str(tmp_path / "g"), "--runtime", "onnx", "--json"]
    )
    assert res.exit_code == 0, res.output
    hits = json.loads(res.output)
    assert hits[0]["identity"] == "id0" and hits[0]["distance"] <= 1e-4  # a is in the gallery
    # 1:N identification with either runtime gives the same answer
    said = {}
    for runtime in ("torch", "onnx"):
        res = runner.invoke(
            app,
            ["identify", str(a), "--index", str(tmp_path / "g"), "--runtime", runtime, "--json"],
        )
        assert res.exit_code == 0, res.output
        said[runtime] = json.loads(res.output)
    assert said["onnx"]["identity"] == said["torch"]["identity"] == "id0", said
    res = runner.invoke(app, ["verify", str(a), str(b), "--model", uri, "--runtime", "tvm"])
    assert res.exit_code == 2 and "torch" in res.output and "onnx" in res.output


def _blocked_run(script: Path, *args: str) -> subprocess.CompletedProcess:
    """``python script args`` in a fresh interpreter where importing torch or siamese fails."""
    boot = (
        "import runpy, sys\n"
        "for name in ('torch', 'siamese', 'mlflow'):\n"
        "    sys.modules[name] = None  # any import of it raises ImportError\n"
        f"sys.argv = [{str(script)!r}, *{list(args)!r}]\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", boot], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_exported_folder_scores_pairs_with_onnxruntime_alone(registered, tmp_path):
    out = tmp_path / "export"
    res = CliRunner().invoke(
        app, ["export", "--model", registered["model_uri"], "--format", "onnx", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    summary = read_json(out / "export.json")
    assert summary["model"] == registered["model_uri"]
    assert set(summary["files"]) == {
        "encoder.onnx",
        "distance.onnx",
        INFO_FILE,
        "preprocessing.json",
        "calibration.json",
        "score_pair.py",
    }
    frame = _pairs(registered)
    files = []
    for i in range(len(frame)):
        for col in ("image_a", "image_b"):
            files.append(tmp_path / f"{col}{i}.png")
            files[-1].write_bytes(frame[col][i])
    done = _blocked_run(out / "score_pair.py", str(out), *map(str, files))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    expected = load_served_model(registered["model_uri"]).predict(None, frame)
    np.testing.assert_allclose(
        [r["distance"] for r in rows], expected["distance"], atol=PARITY_TOLERANCE
    )
    np.testing.assert_allclose([r["probability"] for r in rows], expected["probability"], atol=1e-3)
    assert [r["match"] for r in rows] == list(expected["match"])


def test_a_package_without_onnx_is_refused_by_export_and_the_onnx_runtime(registered, tmp_path):
    project = registered["project"]
    pkg = save_package(tmp_path / "pkg", project / "artifacts" / "train", CALIBRATION, None)
    runner = CliRunner()
    res = runner.invoke(app, ["export", "--model", str(pkg), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2, res.output
    assert "has no ONNX export: it was registered with serve.export_onnx: false" in res.output
    assert not (tmp_path / "x").exists()
    a = tmp_path / "a.png"
    a.write_bytes(registered["pngs"][0])
    res = runner.invoke(app, ["verify", str(a), str(a), "--model", str(pkg), "--runtime", "onnx"])
    assert res.exit_code == 2 and "has no ONNX export" in res.output, res.output


def test_a_package_served_with_the_onnx_runtime_answers_over_http_as_torch(registered, tmp_path):
    """`mlflow models serve` of the same model packaged with serve.runtime: onnx answers the
    same pairs as the in-process torch model, within the parity tolerance."""
    from siamese.registry.client import dataframe_split_json

    project = registered["project"]
    pkg = save_package(
        tmp_path / "pkg",
        project / "artifacts" / "train",
        read_json(project / "artifacts" / "calibrate" / "calibration.json"),
        None,
        runtime="onnx",
        onnx_sample=registered["images"],
    )
    assert read_json(pkg / "artifacts" / "preprocessing.json")["runtime"] == "onnx"
    port, mlflow_bin = free_port(), Path(sys.executable).parent / "mlflow"
    env = {**os.environ, "PATH": f"{mlflow_bin.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(mlflow_bin), "models", "serve", "-m", str(pkg), "--env-manager", "local"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    base, log = f"http://127.0.0.1:{port}", tmp_path / "serve.log"
    import requests

    frame = _pairs(registered)
    with background(cmd, log, env, grace=20) as proc:
        why = wait_http(f"{base}/ping", proc, log, timeout=120)
        assert not why, why
        resp = requests.post(
            f"{base}/invocations",
            data=dataframe_split_json(frame),
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
    assert resp.status_code == 200, resp.text
    served = pd.DataFrame(resp.json()["predictions"])
    expected = mlflow.pyfunc.load_model(str(pkg)).unwrap_python_model().use_runtime("torch")
    by_torch = expected.predict(None, frame)
    np.testing.assert_allclose(served["distance"], by_torch["distance"], atol=PARITY_TOLERANCE)
    assert list(served["match"]) == list(by_torch["match"])


def test_the_export_says_nothing_of_the_exporter_internals(tmp_path, caplog):
    """Each exporter pass logs (onnx_ir: "Removed 37 unused nodes", ...) and torch warns about
    torchvision kernels it skips: none of it reaches a user's log (``--verbose`` shows it)."""
    import logging
    import warnings

    caplog.set_level(logging.INFO)  # what a stage logs
    net = SiameseEncoder("conv4", 16, 8, 4, True).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_onnx(net, tmp_path, real_images(8, 16, 16, 1))
    chatter = [r for r in caplog.records if not r.name.startswith("siamese")]
    assert not chatter, [f"{r.name}: {r.getMessage()}" for r in chatter[:5]]
    assert not caught, [str(w.message) for w in caught[:5]]
