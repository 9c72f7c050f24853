"""The whole product on real components: the Prefect flow runs every stage through DVC in a
temporary project (own git repo, DVC repo and SQLite MLflow) and registers a servable model."""

from __future__ import annotations

import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from pipelines.flow import STAGES, format_summary, training_flow
from siamese.data.images import encode_png
from siamese.registry.tracking import tracking_uri
from tests.helpers.project import dvc_json

pytestmark = pytest.mark.integration


def _digit_images():
    from sklearn.datasets import load_digits

    d = load_digits()
    img = lambda i: (d.images[i] / 16 * 255).astype(np.uint8)  # noqa: E731
    zeros, ones = np.flatnonzero(d.target == 0), np.flatnonzero(d.target == 1)
    return img(zeros[0]), img(zeros[1]), img(ones[0])


def test_flow_end_to_end_then_cached_then_partial_rerun(project, prefect_harness, tmp_path):
    summary = training_flow(project_dir=str(project))
    assert summary["stages"] == dict.fromkeys(STAGES, "ran")
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    text = format_summary(summary)
    assert "version 1" in text and "mlflow ui" in text and "prefect server start" in text

    client = mlflow.MlflowClient(tracking_uri(project))
    name = summary["registration"]["model_name"]
    # one experiment per registered model (register.experiment unset)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    assert len(runs) == 1
    run = runs[0]
    # dvc.lock travels as one artefact (not ~40 dvc.* tags); the train dataset's digest is the
    # DVC hash dvc.lock records for the prepared images
    assert not [k for k in run.data.tags if k.startswith("dvc.")]
    logged = client.download_artifacts(run.info.run_id, "dvc/dvc.lock", str(tmp_path))
    assert "artifacts/prepared" in Path(logged).read_text()
    outs = lock["stages"]["prepare"]["outs"]
    prepared = next(o for o in outs if o["path"] == "artifacts/prepared")
    train_input = next(
        d.dataset
        for d in run.inputs.dataset_inputs
        if {t.key: t.value for t in d.tags}.get("mlflow.data.context") == "train"
    )
    assert train_input.digest == prepared["md5"] == run.data.tags["data.prepared_dvc"]
    assert run.data.params["train.loss"] == "contrastive"
    assert run.data.params["data.image_size"] == "16"
    assert run.data.tags["git_commit"] != "unknown"
    assert "data.prepared_md5" in run.data.tags
    assert 0.5 < run.data.metrics["test.roc_auc"] <= 1.0
    assert "calibration.threshold" in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "val/roc_auc")
    assert len(history) == 2  # one point per epoch
    version = client.get_model_version_by_alias(name, "champion")
    assert str(version.version) == "1" and version.run_id == run.info.run_id
    assert set(client.get_model_version(name, "1").aliases) == {"champion", "challenger"}
    assert version.tags["git_commit"] == run.data.tags["git_commit"]

    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    zero_a, zero_b, one = _digit_images()
    out = model.predict(
        pd.DataFrame(
            {
                "image_a": [encode_png(zero_a), encode_png(zero_a)],
                "image_b": [encode_png(zero_b), encode_png(one)],
            }
        )
    )
    assert list(out.columns) == ["distance", "similarity", "probability", "match"]
    assert out["probability"].between(0, 1).all()
    assert out["distance"].iloc[0] >= 0 and out["match"].dtype == bool
    assert (out["similarity"] > 0).all() and (out["similarity"] <= 1).all()
    # every DVC-tracked output was pushed: a registered version's inputs can be pulled back
    assert dvc_json(project, "status", "--cloud") == {}
    assert (project / ".dvcstore").is_dir()

    again = training_flow(project_dir=str(project))
    assert again["stages"] == dict.fromkeys(STAGES, "skipped")
    assert len(client.search_runs([run.info.experiment_id])) == 1

    git = lambda *a: subprocess.run(["git", *a], cwd=project, check=True, capture_output=True)  # noqa: E731
    git("add", "-A")
    git("commit", "-qm", "first model")

    changed = training_flow(project_dir=str(project), overrides=["train.lr=0.004"])
    assert changed["stages"] == {
        "prepare": "skipped",
        "mine": "skipped",
        "train": "ran",
        "calibrate": "ran",
        "evaluate": "ran",
        "register": "ran",
    }
    assert changed["registration"]["version"] == "2"
    assert "challenger" in changed["registration"]["aliases"]
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
    assert "lr: 0.004" in (project / "params.yaml").read_text()

    # the metrics files are committed with git, so DVC diffs them between commits
    changes = dvc_json(project, "metrics", "diff")
    assert "artifacts/evaluate/metrics.json" in changes
    assert "roc_auc" in changes["artifacts/evaluate/metrics.json"]
