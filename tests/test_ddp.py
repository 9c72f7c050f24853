"""Distributed training as Lightning DDP runs it, on 2 CPU processes with the gloo backend."""

from __future__ import annotations

import json

import mlflow
import pytest

from siamese import paths
from siamese.params_file import set_params
from siamese.registry.tracking import tracking_uri
from siamese.stages.mine import run_mine
from siamese.stages.prepare import run_prepare
from siamese.stages.train import RUN_ID_ENV, run_train


@pytest.mark.timeout(600)
def test_two_process_ddp_trains_and_leaves_one_checkpoint_and_one_run(project, monkeypatch):
    monkeypatch.delenv(RUN_ID_ENV, raising=False)
    params = set_params(
        project / "params.yaml",
        [
            "trainer.strategy=ddp_spawn",
            "trainer.devices=2",
            "trainer.deterministic=false",
            "train.max_epochs=1",
            "train.batches_per_epoch=4",
        ],
    )
    run_prepare(params, paths.PREPARED)
    run_mine(params, paths.PREPARED, paths.PAIRS)
    summary = run_train(params, paths.PREPARED, paths.PAIRS, paths.TRAIN, paths.TRAIN_METRICS)
    assert summary["world_size"] == 2
    assert summary["global_steps"] == 2  # 4 global batches shared by 2 ranks
    ckpts = sorted(p.name for p in (paths.TRAIN / "checkpoints").iterdir())
    assert ckpts == ["best.ckpt", "last.ckpt"]
    assert (paths.TRAIN / "model.pt").is_file()
    client = mlflow.MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name(params.register.experiment_name)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    assert runs[0].info.run_id == json.loads((paths.TRAIN / "run.json").read_text())["run_id"]
    assert "val/roc_auc" in runs[0].data.metrics
