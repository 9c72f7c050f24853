"""Reliability, end to end on CPU: the same inputs give the same model, a killed training resumes,
two runs on one project do not interleave, a numerical fault stops training and keeps the last
good checkpoint. (A lost tracking server: test_tracking_outage.py; bad inputs:
test_bad_input.py; a burst of requests to the server: test_serving.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest
import torch
import yaml
from typer.testing import CliRunner

from siamese import paths
from siamese.config import load_params
from siamese.params_file import set_params
from siamese.registry.tracking import tracking_uri
from siamese.training.resume import scratch_dir
from tests.helpers.checkpoints import last_checkpoint, wait_for_checkpoint
from tests.helpers.params import (
    FAST_PARAMS,
    INTERRUPTIBLE,
    INTERRUPTIBLE_BATCHES,
    INTERRUPTIBLE_EPOCHS,
    QUICK,
)
from tests.helpers.project import ROOT, dvc_json, make_project, start_dvc, tool_env


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _train_runs(project: Path) -> list:
    client = mlflow.MlflowClient(tracking_uri(project))
    exp = client.get_experiment_by_name("siamese-digits")  # register.model_name
    return client.search_runs([exp.experiment_id]) if exp else []


# ------------------------------------------------------------------------ reproducibility


def test_same_params_and_data_give_identical_model_thresholds_and_metrics(tmp_path):
    # augmentation on (params.yaml's Affine), 2 DataLoader workers, deterministic algorithms;
    # prepare -> evaluate in a fresh process per project (DataLoader workers fork, which is only
    # safe before threads exist), both at once
    overrides = FAST_PARAMS + ["train.num_workers=2"]
    first, second = (make_project(tmp_path / name, overrides) for name in ("a", "b"))
    params = load_params(first / "params.yaml")
    assert params.augment and params.trainer.deterministic  # the randomness under test is on
    script = (
        "from tests.helpers.stages import run_stages_until_evaluate; "
        "from siamese.config import load_params; "
        "run_stages_until_evaluate(load_params())"
    )
    env = tool_env(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=proj,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for proj in (first, second)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out

    def outputs(proj: Path) -> dict:
        train = json.loads((proj / paths.TRAIN_METRICS).read_text())
        train.pop("fit_seconds")
        return {
            "train": train,
            "calibration": json.loads((proj / paths.CALIBRATION / "calibration.json").read_text()),
            "metrics": json.loads((proj / paths.EVALUATION / "metrics.json").read_text()),
        }

    a, b = outputs(first), outputs(second)
    assert a["calibration"]["threshold"] == b["calibration"]["threshold"]
    assert a == b  # every metric and threshold, exactly
    # the inputs and the weights themselves are identical, not merely close
    for sub in (paths.PREPARED, paths.PAIRS):
        assert _tree_digest(first / sub) == _tree_digest(second / sub)
    wa = torch.load(first / paths.TRAIN / "model.pt", weights_only=True)
    wb = torch.load(second / paths.TRAIN / "model.pt", weights_only=True)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert np.isfinite(a["metrics"]["roc_auc"])


# ------------------------------------------------------------------------ numerical faults


@pytest.mark.parametrize("poison", ["nan", "inf", "collapse"])
def test_numerical_fault_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    project, monkeypatch, poison
):
    import siamese.training.module
    from siamese.cli import app
    from siamese.losses.base import Loss

    set_params(project / "params.yaml", [*QUICK, "train.monitor=last"])
    runner = CliRunner()
    for stage in ("prepare", "mine", "train"):
        assert runner.invoke(app, [stage]).exit_code == 0
    good_train = _tree_digest(project / paths.TRAIN)
    good_metrics = (project / paths.TRAIN_METRICS).read_bytes()

    # a new training (more epochs) that goes wrong in its third epoch: the loss turns
    # non-finite at one step, or every embedding collapses to one point for the whole epoch
    set_params(project / "params.yaml", ["train.max_epochs=4"])
    per_epoch = load_params(project / "params.yaml").train.batches_per_epoch
    bad_step = 2 * per_epoch + (0 if poison == "collapse" else 1)
    original_loss, original_gather = Loss.forward, siamese.training.module.gather_batch
    steps, loss_calls = iter(range(10**6)), iter(range(10**6))

    def poisoned_loss(self, emb, labels, encoder=None):  # one call per training step
        loss, stats = original_loss(self, emb, labels, encoder)
        if next(loss_calls) == bad_step and poison != "collapse":
            loss = loss * float(poison)
        return loss, stats

    def collapsing_gather(emb, labels):
        emb, labels = original_gather(emb, labels)
        return (emb * 0.0 if next(steps) >= bad_step else emb), labels

    monkeypatch.setattr(Loss, "forward", poisoned_loss)
    if poison == "collapse":
        monkeypatch.setattr(siamese.training.module, "gather_batch", collapsing_gather)
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 5, result.output
    text = " ".join(result.output.split())
    if poison == "collapse":
        assert "embeddings collapsed at epoch 2" in text
    else:
        assert f"non-finite training loss ({poison}) at epoch 2, step {bad_step}" in text
    assert "last good checkpoint (after epoch 1)" in text and "last.ckpt" in text
    assert "Traceback" not in result.output

    # the previous model is untouched, the checkpoint of the last good epoch is kept and finite
    assert _tree_digest(project / paths.TRAIN) == good_train
    assert (project / paths.TRAIN_METRICS).read_bytes() == good_metrics
    ckpt = torch.load(last_checkpoint(project), map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 2 * per_epoch
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    statuses = sorted(r.info.status for r in _train_runs(project))
    assert statuses == ["FAILED", "FINISHED"]


# ------------------------------------------------------------------------ resume after SIGKILL


def _train_process(root_pid: int) -> psutil.Process | None:
    for child in psutil.Process(root_pid).children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if any(Path(c).name == "siamese" for c in cmd) and "train" in cmd:
            return child
    return None


@pytest.mark.slow  # about 80 s: whole pipelines in subprocesses (CI runs it)
@pytest.mark.parametrize("victim", ["train-process", "process-tree"])
def test_sigkill_mid_epoch_then_rerun_resumes_and_registers_one_version(
    project, prefect_harness, victim
):
    """``train-process``: the stage alone dies (DVC sees it fail); ``process-tree``: DVC dies with
    it (as when a machine or container goes), leaving DVC's lock entries behind."""
    from pipelines.flow import training_flow

    epochs, per_epoch = INTERRUPTIBLE_EPOCHS, INTERRUPTIBLE_BATCHES
    set_params(project / "params.yaml", QUICK + INTERRUPTIBLE)
    repro = start_dvc(project, "repro")
    try:
        wait_for_checkpoint(project, repro)
        train = _train_process(repro.pid)
        assert train is not None, "no `siamese train` process under dvc repro"
        if victim == "train-process":  # mid-epoch: the second epoch has just begun
            os.kill(train.pid, signal.SIGKILL)
        else:
            os.killpg(repro.pid, signal.SIGKILL)
        out, _ = repro.communicate(timeout=120)
    finally:
        if repro.poll() is None:
            repro.kill()
    assert repro.returncode != 0, out
    killed_after = torch.load(last_checkpoint(project), weights_only=True)["epoch"]
    assert killed_after < epochs - 1
    assert not (project / paths.TRAIN).exists()  # nothing downstream sees a finished training
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"prepare", "mine"}
    [killed_run] = _train_runs(project)
    assert killed_run.info.status == "RUNNING"  # nobody could mark a SIGKILLed run

    summary = training_flow(project_dir=str(project))
    assert summary["stages"]["train"] == "ran" and summary["stages"]["register"] == "ran"
    metrics = json.loads((project / paths.TRAIN_METRICS).read_text())
    assert metrics["resumed_after_epoch"] == killed_after
    assert metrics["epochs_trained"] == epochs
    assert metrics["global_steps"] == epochs * per_epoch
    assert not scratch_dir(project / paths.TRAIN).exists()

    # the resumed training continued the same MLflow run; exactly one version was registered
    [run] = _train_runs(project)
    assert run.info.run_id == killed_run.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["resumed_after_epoch"] == str(killed_after)
    client = mlflow.MlflowClient(tracking_uri(project))
    history = client.get_metric_history(run.info.run_id, "val/roc_auc")
    assert len({h.step for h in history}) == epochs  # every planned epoch was validated
    name = load_params(project / "params.yaml").register.model_name
    versions = client.search_model_versions(f"name='{name}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert versions[0].run_id == run.info.run_id
    assert versions[0].tags["siamese.registration"] == "complete"
    assert summary["promotion"]["promoted"]


# ------------------------------------------------------------------------ concurrency


@pytest.mark.slow  # about 80 s: whole pipelines in subprocesses (CI runs it)
def test_concurrent_runs_on_one_project_one_runs_one_fails_clearly_one_waits(
    project, prefect_harness
):
    from prefect.settings import PREFECT_API_URL

    set_params(project / "params.yaml", QUICK)
    env = tool_env(PREFECT_API_URL=PREFECT_API_URL.value())
    commands = {
        "a": ["siamese", "run"],
        "b": ["siamese", "run"],
        "waits": ["siamese", "run", "--wait", "600"],
    }
    procs = {
        key: subprocess.Popen(
            cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for key, cmd in commands.items()
    }
    outputs = {key: p.communicate(timeout=540)[0] for key, p in procs.items()}
    codes = {key: p.returncode for key, p in procs.items()}
    pids = {p.pid for p in procs.values()}

    ran = [k for k, out in outputs.items() if "stages: prepare=ran" in out]
    assert len(ran) == 1, outputs  # exactly one run did the work
    assert codes[ran[0]] == 0 and codes["waits"] == 0, outputs
    for key in set(commands) - {ran[0], "waits"}:  # a run that does not wait fails, clearly
        assert codes[key] == 1, outputs[key]
        text = " ".join(outputs[key].split())
        assert "another pipeline run is using this project (pid" in text
        assert "Nothing was changed" in text and "--wait SECONDS" in text
        holder = int(text.split("(pid ")[1].split()[0])
        assert holder in pids and holder != procs[key].pid
    if ran[0] != "waits":  # the waiting run queued behind it and found nothing to do
        assert "stages: prepare=skipped, mine=skipped, train=skipped" in outputs["waits"]

    # the DVC repo, the cache and the remote agree; one MLflow run, one whole version
    assert dvc_json(project, "status", env=env) == {}
    assert dvc_json(project, "status", "--cloud", env=env) == {}
    assert len(_train_runs(project)) == 1
    client = mlflow.MlflowClient(tracking_uri(project))
    name = load_params(project / "params.yaml").register.model_name
    [version] = client.search_model_versions(f"name='{name}'")
    assert version.tags["siamese.registration"] == "complete"
    aliases = client.get_model_version(name, version.version).aliases
    assert set(aliases) == {"champion", "challenger"}
