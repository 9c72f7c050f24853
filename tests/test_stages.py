"""Each stage function on real data (AT&T faces), chained as DVC would chain them, plus the
atomicity and promotion rules."""

from __future__ import annotations

import csv
import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from siamese import paths
from siamese.errors import DatasetError
from siamese.params_file import set_params
from siamese.registry.tracking import tracking_uri
from siamese.stages.calibrate import run_calibrate
from siamese.stages.evaluate import run_evaluate
from siamese.stages.mine import run_mine
from siamese.stages.prepare import run_prepare
from siamese.stages.train import run_train
from tests.helpers.params import FACES_PARAMS
from tests.helpers.stages import register_and_promote, run_all_stages, run_stages_until_evaluate


def faces_params_root(params):
    from pathlib import Path

    return Path(params.data.source)


@pytest.fixture
def faces_params(project, small_faces, monkeypatch):
    monkeypatch.delenv("SIAMESE_MLFLOW_RUN_ID", raising=False)
    return set_params(
        project / "params.yaml",
        [
            f"data.source={small_faces}",
            *FACES_PARAMS,
            "register.model_name=faces",
        ],
    )


def test_prepare_writes_an_identity_disjoint_manifest(faces_params, project):
    summary = run_prepare(faces_params, paths.PREPARED)
    assert summary["images"] == 40 and summary["identities"] == 8
    rows = list(csv.DictReader((paths.PREPARED / "manifest.csv").open()))
    split_of = {}
    for r in rows:
        assert split_of.setdefault(r["identity"], r["split"]) == r["split"]
        assert len(r["sha256"]) == 64 and r["source"].endswith(".pgm")
    assert {"train", "val", "test"} == set(split_of.values())


def test_failed_prepare_leaves_the_previous_output_untouched(faces_params, project, small_faces):
    run_prepare(faces_params, paths.PREPARED)
    before = (paths.PREPARED / "manifest.csv").read_text()
    (sorted(small_faces.iterdir())[1] / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetError, match="corrupt.png"):
        run_prepare(faces_params, paths.PREPARED)
    assert (paths.PREPARED / "manifest.csv").read_text() == before
    assert not [p for p in paths.ARTIFACTS.iterdir() if p.name.startswith(".")]


def test_all_stages_on_faces_then_champion_gate(faces_params, project):
    first = run_all_stages(faces_params)
    assert first["version"] == "1" and first["aliases"] == ["challenger", "champion"]
    calib = json.loads((paths.CALIBRATION / "calibration.json").read_text())
    assert calib["strategy"] == "max_accuracy" and np.isfinite(calib["threshold"])
    assert calib["threshold_ci"]["low"] <= calib["threshold"] <= calib["threshold_ci"]["high"]
    assert calib["probability"]["method"] == "platt"
    roc = list(csv.DictReader((paths.EVALUATION / "roc.csv").open()))
    assert roc[0]["fpr"] == "0" and float(roc[-1]["tpr"]) == 1.0
    report = json.loads((paths.EVALUATION / "metrics.json").read_text())
    ci = report["ci"]["roc_auc"]
    assert ci["low"] <= report["roc_auc"] <= ci["high"]
    assert {"brier", "ece", "kfold_accuracy"} <= set(report)
    figures = {p.name for p in (paths.EVALUATION / "figures").iterdir()}
    assert figures == {
        "roc.png",
        "det.png",
        "distance_hist.png",
        "reliability.png",
        "hardest_errors.png",
        "openset_det.png",  # 1:N identification, FNIR against FPIR
    }

    # the served model decides on real face pairs and names malformed input
    client = mlflow.MlflowClient(tracking_uri())
    run = client.get_run(first["run_id"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/roc.png", "evaluation/distance_hist.png"} <= artifacts
    model = mlflow.pyfunc.load_model("models:/faces@champion")
    faces = sorted(p for p in faces_params_root(faces_params).iterdir())
    a, b = sorted(faces[0].iterdir())[:2]
    c = sorted(faces[1].iterdir())[0]
    out = model.predict(
        pd.DataFrame(
            {
                "image_a": [a.read_bytes(), a.read_bytes()],
                "image_b": [b.read_bytes(), c.read_bytes()],
            }
        )
    )
    assert out["match"].dtype == bool and (out["distance"] >= 0).all()
    threshold = first["threshold"]
    assert list(out["match"]) == list(out["distance"] <= threshold)
    with pytest.raises(Exception, match="row 0 image_b"):
        model.predict(pd.DataFrame({"image_a": [a.read_bytes()], "image_b": [b"not an image"]}))

    # a worse challenger (an untrained one) must not take the champion alias
    worse = set_params(project / "params.yaml", ["train.lr=1e-9", "train.max_epochs=1"])
    second = run_all_stages(worse)
    champ = client.get_model_version_by_alias("faces", "champion")
    challenger = client.get_model_version_by_alias("faces", "challenger")
    assert str(challenger.version) == "2"
    promo = second["promotion"]
    assert promo["champion_version"] == "1" and promo["metric"] == "roc_auc"
    if second["promoted"]:
        assert promo["challenger_value"] > promo["champion_value"]
        assert str(champ.version) == "2"
    else:
        assert str(champ.version) == "1" and second["aliases"] == ["challenger"]
        assert promo["decision"] == "kept"


def test_register_failure_leaves_no_version(faces_params, project, monkeypatch):
    run_stages_until_evaluate(faces_params)
    import siamese.stages.register as reg

    def boom(*a, **k):
        raise OSError("disk full while writing registration.json")

    monkeypatch.setattr(reg, "atomic_dir", boom)
    with pytest.raises(OSError, match="disk full"):
        register_and_promote(faces_params)
    client = mlflow.MlflowClient(tracking_uri())
    assert client.search_model_versions("name='faces'") == []
    assert not paths.REGISTRATION.exists()


def test_target_far_strategy_with_isotonic_probabilities(faces_params, project):
    run_stages_until_evaluate(faces_params)
    params = set_params(
        project / "params.yaml",
        [
            "calibrate.strategy=target_far",
            "calibrate.target=0.05",
            "calibrate.probability=isotonic",
            "evaluate.kfold=0",
            "evaluate.bootstrap_resamples=0",
        ],
    )
    calib = run_calibrate(params, paths.PREPARED, paths.PAIRS, paths.TRAIN, paths.CALIBRATION)
    assert calib["val"]["far"] <= 0.05
    assert calib["probability"]["method"] == "isotonic"
    report = run_evaluate(
        params, paths.PREPARED, paths.PAIRS, paths.TRAIN, paths.CALIBRATION, paths.EVALUATION
    )
    assert "ci" not in report and "kfold_accuracy" not in report
    assert 0 <= report["brier"] <= 1


def test_hard_negative_mining_with_the_champion(faces_params, project):
    from siamese.data.artifacts import PreparedData, load_pairs
    from siamese.models.loading import embed, load_encoder

    run_all_stages(faces_params)  # registers v1 as champion
    random_neg = load_pairs(paths.PAIRS / "train.npz")
    params = set_params(
        project / "params.yaml",
        ["mine.hard_negatives_from=models:/faces@champion", "mine.hard_negative_fraction=1.0"],
    )
    summary = run_mine(params, paths.PREPARED, paths.PAIRS)
    assert summary["reference_model"] == "models:/faces@champion"
    assert summary["train_hard_negatives"] == summary["train_pairs"] - summary["train_positive"]
    hard = load_pairs(paths.PAIRS / "train.npz")
    data = PreparedData(paths.PREPARED)
    assert not np.any(
        data.labels[hard["a"]][hard["y"] == 0] == data.labels[hard["b"]][hard["y"] == 0]
    )
    assert set(data.labels[hard["a"]]) <= set(data.labels[data.indices("train")])
    emb = embed(load_encoder(paths.TRAIN), data.images)

    def mean_neg_distance(p):
        n = p["y"] == 0
        return np.linalg.norm(emb[p["a"][n]] - emb[p["b"][n]], axis=1).mean()

    assert mean_neg_distance(hard) < mean_neg_distance(random_neg)


def test_bce_head_model_is_calibrated_evaluated_and_served_with_its_learned_distance(
    faces_params, project
):
    params = set_params(
        project / "params.yaml", ["train.loss=bce", "train.miner=all_pairs", "mine.test_pairs=40"]
    )
    result = run_all_stages(params)
    from siamese.models.loading import load_encoder

    encoder = load_encoder(paths.TRAIN)
    assert encoder.config["distance"] == "learned" and encoder.head is not None
    report = json.loads((paths.EVALUATION / "metrics.json").read_text())
    assert 0 <= report["roc_auc"] <= 1 and np.isfinite(result["threshold"])

    model = mlflow.pyfunc.load_model("models:/faces@champion")
    faces = sorted(faces_params_root(params).iterdir())
    a, b = sorted(faces[0].iterdir())[:2]
    c = sorted(faces[1].iterdir())[0]
    out = model.predict(
        pd.DataFrame({"image_a": [a.read_bytes()] * 2, "image_b": [b.read_bytes(), c.read_bytes()]})
    )
    # the served distance is the head's 1 - p(same), computed in process the same way
    from siamese.data.images import read_image
    from siamese.models.loading import embed, embedding_distances

    size = encoder.config["image_size"]
    emb = embed(encoder, np.stack([read_image(p, size) for p in (a, a, b, c)])).astype(np.float64)
    expected = embedding_distances(encoder, emb[:2], emb[2:])
    np.testing.assert_allclose(out["distance"].to_numpy(), expected, rtol=1e-6)
    assert ((out["distance"] >= 0) & (out["distance"] <= 1)).all()
    assert list(out["match"]) == list(out["distance"] <= result["threshold"])


@pytest.mark.parametrize("monitor", ["pair_loss", "last"])
def test_train_exports_the_weights_the_monitor_chooses(faces_params, project, monitor):
    import torch

    params = set_params(project / "params.yaml", [f"train.monitor={monitor}"])
    run_prepare(params, paths.PREPARED)
    run_mine(params, paths.PREPARED, paths.PAIRS)
    summary = run_train(params, paths.PREPARED, paths.PAIRS, paths.TRAIN, paths.TRAIN_METRICS)
    key = "last_val_roc_auc" if monitor == "last" else f"best_val_{monitor}"
    assert np.isfinite(summary[key])
    assert summary["epochs_trained"] == params.train.max_epochs
    if monitor == "last":  # the exported encoder is the final epoch's
        last = torch.load(paths.TRAIN / "checkpoints" / "last.ckpt", weights_only=True)
        from siamese.models.loading import load_encoder

        exported = load_encoder(paths.TRAIN).state_dict()
        for k, v in exported.items():
            torch.testing.assert_close(v, last["state_dict"][f"encoder.{k}"])
