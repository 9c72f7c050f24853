"""A gallery served with its model (siamese register-gallery, siamese.registry.gallery_package)
on real AT&T faces: `mlflow models serve` of models:/NAME-gallery@champion answers mode identify
and anomaly as the CLI does; a gallery embedded by other weights is refused; promotion of a new
champion embeds the registered gallery again with it. Slow: two trainings, registrations and a
model server (CI runs it)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from typer.testing import CliRunner

from siamese.cli import app
from siamese.errors import GalleryError
from siamese.registry.client import dataframe_split_json
from tests.helpers.params import FAST_PARAMS
from tests.helpers.project import SHARED_DATA, make_project
from tests.helpers.servers import background, free_port, wait_http

pytestmark = pytest.mark.slow
NAME = "faces-gallery-serve"


def _cli(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """v1 (one epoch) champion of NAME, trained on 20 AT&T people; a gallery of 5 of the 10
    others (2 photos each) indexed with it, calibrated on the project's val people, registered;
    their other photos and the 5 strangers kept to query."""
    from siamese.params_file import set_params
    from siamese.registry.tracking import tracking_uri
    from tests.helpers.stages import run_all_stages

    att = SHARED_DATA / "att_faces"
    if not att.exists():
        pytest.skip(f"real dataset not found at {att} (set SIAMESE_SHARED_DATA)")
    root = tmp_path_factory.mktemp("gallery-serving")
    people = sorted(p for p in att.iterdir() if p.is_dir())
    data, gallery, probes = root / "faces", root / "gallery", root / "probes"
    for person in people[:20]:
        shutil.copytree(person, data / person.name)
    for i, person in enumerate(people[20:30]):
        imgs = sorted(person.iterdir())
        for k, img in enumerate(imgs):
            dest = (gallery if i < 5 and k < 2 else probes) / person.name
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(img, dest / img.name)
    overrides = [
        f"data.source={data}",
        "data.image_size=32",
        "data.val_fraction=0.4",
        "data.test_fraction=0.1",
        "mine.val_pairs=100",
        "mine.test_pairs=50",
        "mine.train_pairs=50",
        "model.channels=16",
        "model.embedding_dim=32",
        "train.identities_per_batch=5",
        "train.images_per_identity=4",
        "train.batches_per_epoch=10",
        "train.max_epochs=1",
        "train.monitor=last",
        "calibrate.bootstrap_resamples=0",
        "evaluate.bootstrap_resamples=0",
        "evaluate.kfold=0",
        "evaluate.retrieval=false",
        "evaluate.oneshot_episodes=0",
        f"register.model_name={NAME}",
        "identify.target_fpir=0.1",
        "identify.gallery_images=2",
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        project = make_project(root / "project", FAST_PARAMS)
        mp.chdir(project)
        params = set_params(project / "params.yaml", overrides)
        first = run_all_stages(params)
        assert first["promoted"] and first["version"] == "1"
        uri = tracking_uri()
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        out = root / "index"
        res = _cli("index", str(gallery), "--model", f"models:/{NAME}@champion", "--out", str(out))
        assert res.exit_code == 0, res.output
        res = _cli("register-gallery", str(out))
        assert res.exit_code == 0, res.output
        print("register-gallery said:", res.output)
        registered = json.loads(res.stdout)
        yield {
            "project": project,
            "params": params,
            "overrides": overrides,
            "index": out,
            "gallery": gallery,
            "probes": probes,
            "uri": uri,
            "registered": registered,
            "root": root,
        }


def test_served_gallery_answers_identify_and_anomaly_as_the_cli(registry):
    reg = registry["registered"]
    assert reg["gallery_model"] == f"{NAME}-gallery" and reg["model_version"] == "1"
    assert reg["aliases"] == ["champion"] and reg["identities"] == 5
    files = _files(registry["probes"])[::4]
    cli = json.loads(
        _cli("identify", *map(str, files), "--index", str(registry["index"]), "--json").output
    )
    served = mlflow.pyfunc.load_model(f"models:/{NAME}-gallery@champion")
    frame = pd.DataFrame({"image": [f.read_bytes() for f in files]})
    got = served.predict(frame, params={"mode": "identify"})
    assert list(got["identity"]) == [a["identity"] for a in cli]
    np.testing.assert_allclose(got["distance"], [a["distance"] for a in cli], rtol=1e-5)
    assert list(got["known"]) == [a["known"] for a in cli]
    cli_anomaly = json.loads(
        _cli("anomaly", *map(str, files), "--index", str(registry["index"]), "--json").output
    )
    got = served.predict(frame, params={"mode": "anomaly"})
    np.testing.assert_allclose(got["score"], [a["score"] for a in cli_anomaly], rtol=1e-5)
    assert list(got["anomaly"]) == [a["anomaly"] for a in cli_anomaly]
    # the plain model has no gallery: identify is refused naming the gallery package
    plain = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    with pytest.raises(MlflowException, match="needs a gallery.*-gallery@champion"):
        plain.predict(frame, params={"mode": "identify"})

    # over HTTP: mlflow models serve of the gallery package
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    env = {**os.environ, "PATH": str(mlflow_bin.parent) + os.pathsep + os.environ["PATH"]}
    cmd = [str(mlflow_bin), "models", "serve", "-m", f"models:/{NAME}-gallery@champion"]
    cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    log = registry["root"] / "serve.log"
    import requests

    with background(cmd, log, env, grace=20) as proc:
        why = wait_http(f"http://127.0.0.1:{port}/ping", proc, log, timeout=120)
        assert not why, why
        r = requests.post(
            f"http://127.0.0.1:{port}/invocations",
            data=dataframe_split_json(frame, {"mode": "identify"}),
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
    assert r.status_code == 200, r.text
    http = pd.DataFrame(r.json()["predictions"])
    assert list(http["identity"]) == [a["identity"] for a in cli]
    np.testing.assert_allclose(http["distance"], [a["distance"] for a in cli], rtol=1e-5)


def test_a_gallery_embedded_by_other_weights_is_refused(registry, tmp_path):
    """v1's gallery in a package of other weights (an untrained copy of the architecture)."""
    import torch

    from siamese.data.images import ImageSpec
    from siamese.io import read_json
    from siamese.models.loading import encoder_from_config
    from siamese.registry.package import pyfunc_kwargs

    pkg = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=str(tmp_path)))
    other = tmp_path / "other"
    shutil.copytree(pkg / "artifacts" / "encoder", other)
    cfg = read_json(other / "model.json")
    torch.manual_seed(123)
    from siamese.models.loading import save_safetensors

    save_safetensors(encoder_from_config(cfg).state_dict(), other / "model.safetensors")
    arts = {
        "encoder": str(other),
        "preprocessing": str(pkg / "artifacts" / "preprocessing.json"),
        "calibration": str(pkg / "artifacts" / "calibration.json"),
        "gallery": str(registry["index"]),
    }
    mlflow.pyfunc.save_model(
        str(tmp_path / "mixed"), **pyfunc_kwargs(arts, ImageSpec.from_config(cfg))
    )
    with pytest.raises(GalleryError, match="embedded by models:/.*/1.*not by the weights"):
        mlflow.pyfunc.load_model(str(tmp_path / "mixed"))
    # and the CLI refuses to query the gallery with other weights of the same architecture
    del arts["gallery"]
    plain = tmp_path / "other-weights"
    mlflow.pyfunc.save_model(str(plain), **pyfunc_kwargs(arts, ImageSpec.from_config(cfg)))
    query = str(_files(registry["probes"])[0])
    res = CliRunner().invoke(
        app, ["identify", query, "--index", str(registry["index"]), "--model", str(plain)]
    )
    assert res.exit_code == 2 and "weights differ" in res.output, res.output


def test_promotion_embeds_the_registered_gallery_again_with_the_new_champion(registry):
    from siamese.params_file import set_params
    from siamese.registry.gallery import encoder_fingerprint
    from siamese.registry.loading import load_served_model
    from tests.helpers.stages import run_all_stages

    project = registry["project"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        params = set_params(project / "params.yaml", ["train.max_epochs=15"])
        second = run_all_stages(params)
    assert second["version"] == "2" and second["promoted"], second["promotion"]["reason"]
    gallery = second["promotion"]["gallery"]
    assert gallery["model_version"] == "2" and gallery["aliases"] == ["champion"]
    assert gallery["reembedded_from"] == registry["registered"]["version"]
    served = mlflow.pyfunc.load_model(f"models:/{NAME}-gallery@champion").unwrap_python_model()
    meta = served.gallery.meta
    assert meta["model"] == f"models:/{NAME}/2" and meta["count"] == 10
    v2 = load_served_model(f"models:/{NAME}/2")
    assert meta["encoder_sha256"] == encoder_fingerprint(v2.encoder)
    assert sorted(set(meta["identities"])) == sorted(p.name for p in registry["gallery"].iterdir())
    assert meta["open_set"]["calibration"]["calibrated_on"].endswith("(val split)")
    # the better model identifies the enrolled people's other photos
    probes = [p for p in _files(registry["probes"]) if p.parent.name in meta["identities"]]
    frame = pd.DataFrame({"image": [p.read_bytes() for p in probes]})
    got = served.predict(None, frame, params={"mode": "identify"})
    right = np.mean([g == p.parent.name for g, p in zip(got["identity"], probes, strict=True)])
    print(f"v2 gallery: {right:.3f} of 40 enrolled probes identified")
    assert right >= 0.5
