"""What an MLflow run and a registered version say about themselves: a name that tells runs
apart, one experiment per registered model, the train / validation / test datasets with their
DVC hashes, MLflow's source (git) tags, a description with the test results, system metrics;
and a model version described with its headline metrics."""

from __future__ import annotations

import json
import re
import subprocess

import mlflow
import pytest

from siamese.config import load_params
from siamese.io import file_md5
from siamese.params_file import set_params
from siamese.registry.runs import dataset_name
from siamese.registry.tracking import dvc_dir_hash, tracking_uri
from tests.helpers.params import QUICK
from tests.helpers.stages import run_register_stage, run_stages_until_evaluate


def _git(project, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=project, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("digits", "digits"),
        ("../shared/data/att_faces", "att_faces"),
        ("../shared/data/omniglot/images_background.zip", "images_background"),
        ("data/faces/", "faces"),
        ("data/lfw/manifest.csv", "lfw-manifest"),
        ("people.parquet", "people"),
    ],
)
def test_dataset_name_is_the_folder_or_archive_name(source, name):
    assert dataset_name(source) == name


def test_a_run_and_its_model_version_explain_themselves(project):
    params = set_params("params.yaml", QUICK)
    run_stages_until_evaluate(params)
    reg = run_register_stage(params)

    client = mlflow.MlflowClient(tracking_uri(project))
    exp = client.get_experiment_by_name("siamese-digits")  # register.model_name: unset experiment
    assert exp is not None and client.get_experiment_by_name("siamese") is None
    run = client.get_run(reg["run_id"])
    assert run.info.experiment_id == exp.experiment_id
    assert re.fullmatch(r"digits-conv4-contrastive-[0-9a-f]{8}", run.info.run_name)

    # MLflow's own source tags: the UI's Source column shows the commit
    tags = run.data.tags
    head = _git(project, "rev-parse", "HEAD")
    assert tags["mlflow.source.git.commit"] == head == tags["git_commit"]
    assert tags["mlflow.source.git.branch"] == _git(project, "rev-parse", "--abbrev-ref", "HEAD")
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    # a few summary hashes, no tag per dvc.lock entry
    assert not [k for k in tags if k.startswith("dvc.")]
    assert tags["data.prepared_dvc"] == dvc_dir_hash(project / "artifacts/prepared")
    assert re.fullmatch(r"[0-9a-f]{32}", tags["params.md5"])

    # the datasets: train (prepared images), validation and test pairs, digests their DVC hashes
    inputs = {
        {t.key: t.value for t in d.tags}["mlflow.data.context"]: d.dataset
        for d in run.inputs.dataset_inputs
    }
    assert set(inputs) == {"train", "validation", "test"}
    assert inputs["train"].name == "digits-train"
    assert inputs["train"].digest == tags["data.prepared_dvc"]
    for context, split in (("validation", "val"), ("test", "test")):
        path = next((project / "artifacts/pairs").glob(f"{split}*"))
        assert inputs[context].digest == file_md5(path)
        assert json.loads(inputs[context].source)["uri"] == path.resolve().as_uri()

    # descriptions: what was trained, on what, and the headline test results
    note = tags["mlflow.note.content"]
    test = reg["test"]
    assert "conv4" in note and "contrastive" in note and head in note
    assert "Test results" in note and f"{test['roc_auc']:.4f}" in note
    version = client.get_model_version(reg["model_name"], reg["version"])
    for text in (f"{test['roc_auc']:.4f}", f"{reg['threshold']:.4f}", head, run.info.run_name):
        assert text in version.description
    assert tags["data.prepared_dvc"] in version.description

    # CPU and memory sampled while training
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
        run.data.metrics
    )


def test_an_explicit_experiment_is_kept(project):
    params = set_params("params.yaml", ["register.experiment=siamese"])
    assert params.register.experiment_name == "siamese"
    assert load_params("params.yaml").register.experiment_name == "siamese"
    params = set_params("params.yaml", ["register.experiment=null"])
    assert params.register.experiment_name == params.register.model_name == "siamese-digits"


@pytest.mark.slow
def test_run_with_a_preset_after_another_trains_and_names_its_run(
    project, att_faces, prefect_harness
):
    # issue #17: `siamese run --preset att_faces` after `--preset omniglot` failed on Omniglot's
    # leftover data.split_by: group; now it trains, in the preset's own experiment
    from typer.testing import CliRunner

    from siamese.cli import app
    from siamese.params_file import preset_overrides

    set_params("params.yaml", preset_overrides("omniglot"))
    quick = [
        f"data.source={att_faces}",
        "data.image_size=16",
        "mine.val_pairs=60",
        "mine.test_pairs=100",
        "model.channels=8",
        "model.embedding_dim=16",
        "train.batches_per_epoch=4",
        *QUICK,
    ]
    args = ["run", "--preset", "att_faces", "--no-push"]
    for item in quick:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    params = load_params("params.yaml")
    assert params.data.split_by == "auto" and params.data.rotation_classes == []
    assert params.train.max_minutes is None and params.train.max_epochs == 1  # --set wins

    client = mlflow.MlflowClient(tracking_uri(project))
    exp = client.get_experiment_by_name("siamese-att-faces")
    (run,) = client.search_runs([exp.experiment_id])
    assert re.fullmatch(r"att_faces-conv4-contrastive-[0-9a-f]{8}", run.info.run_name)
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {
        "att_faces-train",
        "att_faces-validation",
        "att_faces-test",
    }
