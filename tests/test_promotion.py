"""Promotion and rollback on a real registry: the gate compares challenger and champion on the
same benchmark pairs, refuses a challenger without a successful evaluation, records every alias
move, and rolls back to the previous champion."""

from __future__ import annotations

import json
import logging
import shutil

import mlflow
import pytest
import torch
from typer.testing import CliRunner

from siamese import paths
from siamese.cli import app
from siamese.config import load_params, validate_params
from siamese.errors import ParamsError, PromotionError
from siamese.params_file import set_params
from siamese.registry.aliases import HISTORY_TAG
from siamese.registry.promotion import improvement
from siamese.registry.tracking import tracking_uri
from siamese.stages.calibrate import run_calibrate
from siamese.stages.evaluate import run_evaluate
from siamese.stages.mine import run_mine
from siamese.stages.prepare import run_prepare
from siamese.stages.promote import run_rollback
from siamese.stages.train import run_train
from tests.helpers.params import QUICK
from tests.helpers.stages import run_promote_stage, run_register_stage


def _register(params) -> str:
    return run_register_stage(params)["version"]


def _promote(params, version=None) -> dict:
    return run_promote_stage(params, version)


def _champion(client, name) -> str:
    return str(client.get_model_version_by_alias(name, "champion").version)


def _zeroed_weights() -> None:
    """Overwrite the trained encoder with all-zero weights: every embedding is the same, every
    distance 0, so its benchmark ROC AUC is exactly 0.5 (a known-bad model)."""
    path = paths.TRAIN / "model.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    for k, v in state.items():
        if v.is_floating_point() and not k.endswith("running_var"):
            state[k] = torch.zeros_like(v)
    torch.save(state, path)


def test_promotion_gate_history_rollback_and_refusal(project, caplog):
    caplog.set_level(logging.INFO, logger="siamese")
    params = set_params(project / "params.yaml", QUICK)
    name = params.register.model_name
    run_prepare(params, paths.PREPARED)
    run_mine(params, paths.PREPARED, paths.PAIRS)
    run_train(params, paths.PREPARED, paths.PAIRS, paths.TRAIN, paths.TRAIN_METRICS)
    run_calibrate(params, paths.PREPARED, paths.PAIRS, paths.TRAIN, paths.CALIBRATION)
    run_evaluate(
        params, paths.PREPARED, paths.PAIRS, paths.TRAIN, paths.CALIBRATION, paths.EVALUATION
    )
    client = mlflow.MlflowClient(tracking_uri())
    good = paths.TRAIN / "model.good.pt"
    shutil.copy(paths.TRAIN / "model.pt", good)

    # v1, a known-bad model, is the first version: no champion yet, so it is promoted
    _zeroed_weights()
    assert _register(params) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "1"
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(name, "champion")  # register alone promotes nothing
    first = _promote(params)
    assert first["decision"] == "promoted" and first["champion_version"] is None
    assert first["challenger_value"] == pytest.approx(0.5)
    assert _champion(client, name) == "1"
    tags = client.get_model_version(name, "1").tags
    assert tags["promotion.decision"] == "promoted" and tags["promotion.metric"] == "roc_auc"
    assert tags["promotion.champion_version"] == "none" and "promotion.at" in tags
    assert "previous_champion" not in tags
    saved = json.loads((paths.PROMOTION / "promotion.json").read_text())
    assert saved["version"] == "1" and saved["promoted"]

    # nothing to roll back to yet: a clear failure, through the CLI too
    with pytest.raises(PromotionError, match="no previous champion"):
        run_rollback(params)
    res = CliRunner().invoke(app, ["rollback"])
    assert res.exit_code == 1 and "no previous champion" in res.output

    # v2, the trained model, beats it on the same benchmark pairs
    shutil.copy(good, paths.TRAIN / "model.pt")
    assert _register(params) == "2"
    assert _champion(client, name) == "1"
    second = _promote(params)
    assert second["decision"] == "promoted", second["reason"]
    assert second["champion_value"] == pytest.approx(0.5)
    assert second["challenger_value"] > 0.5 and second["improvement"] > 0
    assert _champion(client, name) == "2"
    tags = client.get_model_version(name, "2").tags
    assert tags["previous_champion"] == "1" and tags["promotion.champion_version"] == "1"
    assert float(tags["promotion.challenger_value"]) == pytest.approx(second["challenger_value"])
    assert tags["promotion.benchmark_md5"] == second["benchmark_md5"]

    # the same model again is no new version: the challenger is the version serving it
    assert _register(params) == "2" and _champion(client, name) == "2"
    # v3 serves the same weights and threshold under another request limit (a serve.* param):
    # no improvement on the same pairs, so the champion is kept, also when lower is better
    # (EER) and with a minimum improvement the challenger cannot reach
    params = set_params(project / "params.yaml", ["serve.max_request_bytes=40000000"])
    assert _register(params) == "3"
    eer = set_params(
        project / "params.yaml", ["register.promote_metric=eer", "register.min_improvement=0.01"]
    )
    kept = _promote(eer)
    assert kept["decision"] == "kept" and kept["metric"] == "eer"
    assert kept["challenger_value"] == pytest.approx(kept["champion_value"])
    assert _champion(client, name) == "2"
    assert client.get_model_version(name, "3").tags["promotion.decision"] == "kept"
    again = _promote(eer, "2")  # the champion itself: nothing to do
    assert again["decision"] == "unchanged" and _champion(client, name) == "2"

    # rollback: champion back to v1, recorded on the versions and in the history
    res = CliRunner().invoke(app, ["rollback"])
    assert res.exit_code == 0, res.output
    assert _champion(client, name) == "1"
    v2 = client.get_model_version(name, "2").tags
    assert v2["rolled_back_to"] == "1" and "rolled_back_at" in v2
    history = json.loads(client.get_registered_model(name).tags[HISTORY_TAG])
    assert [(h["action"], h["from"], h["to"]) for h in history] == [
        ("promote", None, "1"),
        ("promote", "1", "2"),
        ("rollback", "2", "1"),
    ]
    moves = [r.getMessage() for r in caplog.records if "alias champion" in r.getMessage()]
    assert len(moves) == 3 and "v2 -> v1 (rollback)" in moves[-1]
    # a rolled-back version is not re-promoted by the next scheduled run
    client.set_registered_model_alias(name, "challenger", "2")
    assert _promote(params)["decision"] == "skipped" and _champion(client, name) == "1"

    # refused: a challenger whose run FAILED, or whose run has no evaluation metrics
    source = client.get_model_version(name, "2").source
    exp = client.get_experiment_by_name(params.register.experiment_name).experiment_id
    failed = client.create_run(exp, run_name="failed-evaluation")
    client.set_terminated(failed.info.run_id, "FAILED")
    v4 = client.create_model_version(name, source, run_id=failed.info.run_id)
    client.set_registered_model_alias(name, "challenger", v4.version)
    with pytest.raises(PromotionError, match="FAILED"):
        _promote(params)
    assert client.get_model_version(name, "4").tags["promotion.decision"] == "refused"
    unevaluated = client.create_run(exp, run_name="no-evaluation")
    client.set_terminated(unevaluated.info.run_id, "FINISHED")
    v5 = client.create_model_version(name, source, run_id=unevaluated.info.run_id)
    client.set_registered_model_alias(name, "challenger", v5.version)
    res = CliRunner().invoke(app, ["promote"])
    assert (
        res.exit_code == 3 and "no evaluation metric test.eer" in res.output
    )  # params now say eer
    assert _champion(client, name) == "1"
    assert client.get_model_version(name, "5").tags["promotion.decision"] == "refused"


def test_promotion_params_are_validated():
    ok = validate_params({"register": {"promote_metric": "tar_at_far", "promote_far": 0.001}})
    assert ok.register.promote_far == 0.001
    for bad, key in [
        ({"register": {"promote_metric": "accuracy"}}, "register.promote_metric"),
        ({"register": {"min_improvement": -0.1}}, "register.min_improvement"),
        ({"register": {"min_improvement": float("nan")}}, "register.min_improvement"),
        ({"register": {"promote_far": 1.5}}, "register.promote_far"),
        ({"schedule": {"cron": "every monday"}}, "schedule.cron"),
        ({"schedule": {"cron": "0 3 * *"}}, "schedule.cron"),
        ({"schedule": {"timezone": "Mars/Olympus"}}, "schedule.timezone"),
    ]:
        with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
            validate_params(bad)
    defaults = load_params(paths.PARAMS)
    assert defaults.schedule.cron == "0 3 * * 1" and defaults.register.min_improvement == 0.0


def test_improvement_follows_the_metric_direction():
    auc = validate_params({"register": {"promote_metric": "roc_auc"}})
    eer = validate_params({"register": {"promote_metric": "eer"}})
    assert improvement(auc, 0.9, 0.8) == pytest.approx(0.1)
    assert improvement(eer, 0.1, 0.2) == pytest.approx(0.1)  # a lower EER is better
    assert improvement(eer, 0.2, 0.1) < 0
