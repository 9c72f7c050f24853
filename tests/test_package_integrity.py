"""Tamper evidence: a registered version whose weights were altered in the artifact store after
registration is refused by every loader (siamese's own and MLflow's ``load_context``, which
``mlflow models serve`` runs), with the file and both digests named; a package rewritten
together with its checksums is refused against the digest the registry recorded.

The version is registered as the register stage does it (built package, model from code logged
into a run, tagged with its model digest) around an untrained tiny encoder: integrity does not
depend on what the weights learned."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch

from siamese.cli import explain
from siamese.config import ServeParams
from siamese.errors import EXIT_BAD_INPUT, PackageIntegrityError
from siamese.models.encoders import SiameseEncoder
from siamese.registry.integrity import CHECKSUMS_FILE, file_sha256, write_checksums
from siamese.registry.loading import load_pyfunc, load_registered_encoder, load_served_model
from siamese.registry.registration import built_package, log_model
from siamese.registry.tracking import active_tracking_uri, ensure_experiment, project_store_uri
from siamese.registry.versions import MODEL_DIGEST_TAG

NAME = "tamper-test"


@pytest.fixture
def registered(tmp_path, monkeypatch):
    """NAME v1 in a fresh project store: (tracking URI, the version's stored artifacts folder,
    the model digest recorded on the version)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = project_store_uri(tmp_path)
    torch.manual_seed(0)
    encoder = SiameseEncoder("mlp", 16, 8, 8, True)
    train = tmp_path / "train"
    train.mkdir()
    torch.save(encoder.state_dict(), train / "model.pt")
    (train / "model.json").write_text(json.dumps(encoder.config))
    calibration = tmp_path / "calibration.json"
    calibration.write_text(
        json.dumps({"strategy": "eer", "threshold": 0.5, "probability": {"method": "none"}})
    )
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(ensure_experiment(NAME, tmp_path)).info.run_id
    with built_package(train, calibration, ServeParams()) as pkg:
        with active_tracking_uri(uri):
            model_uri = log_model(run_id, pkg.artifacts, pkg.image)
        client.create_registered_model(NAME)
        client.create_model_version(
            NAME, model_uri, run_id, tags={MODEL_DIGEST_TAG: pkg.model_digest}
        )
        digest = pkg.model_digest
    stored = [p.parent for p in tmp_path.glob("mlartifacts/**/artifacts/" + CHECKSUMS_FILE)]
    assert len(stored) == 1, stored
    return uri, stored[0], digest


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_altered_weights_are_refused_naming_the_file_and_both_digests(registered):
    uri, artifacts, digest = registered
    model_uri = f"models:/{NAME}/1"
    # intact: loads, and the files scored are the ones registered
    assert load_pyfunc(model_uri, uri)[1] == digest
    weights = artifacts / "encoder" / "model.safetensors"
    recorded = json.loads((artifacts / CHECKSUMS_FILE).read_text())["files"]
    assert recorded["encoder/model.safetensors"] == file_sha256(weights)
    assert set(recorded) == {
        "encoder/model.safetensors",
        "encoder/model.json",
        "preprocessing.json",
        "calibration.json",
    }

    _flip_a_byte(weights)
    actual = file_sha256(weights)
    for load in (load_served_model, load_registered_encoder):
        with pytest.raises(PackageIntegrityError) as err:
            load(model_uri, uri)
        message = str(err.value)
        assert "encoder/model.safetensors" in message
        assert actual in message and recorded["encoder/model.safetensors"] in message
        assert explain(err.value) == (message, EXIT_BAD_INPUT)
    # MLflow's own load (what `mlflow models serve` runs) refuses it in load_context
    with active_tracking_uri(uri), pytest.raises(Exception) as err:
        mlflow.pyfunc.load_model(model_uri)
    assert "encoder/model.safetensors" in str(err.value) and actual in str(err.value)

    # checksums rewritten to match the altered weights: the registry's digest still refuses it
    write_checksums(artifacts)
    with pytest.raises(PackageIntegrityError) as err:
        load_served_model(f"models:/{NAME}/1", uri)
    message = str(err.value)
    assert f"{NAME} version 1" in message and digest in message and MODEL_DIGEST_TAG in message
