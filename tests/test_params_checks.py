"""Params that used to pass ``siamese check`` and fail only after the work was done (a trainer
setting Lightning refuses, a model name MLflow refuses, a key given twice, a params file that is
not a mapping): ``siamese check`` refuses each one (exit 2, the key named, no traceback), and
``siamese run`` refuses it before DVC or Prefect start, leaving params.yaml and artifacts/ as they
were. README.md "Bad input" lists the same cases."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from siamese.cli import app
from tests.helpers.project import ROOT

runner = CliRunner()


def set_raw(key: str, value) -> Callable[[str], str]:
    """params.yaml text with ``key`` set to ``value`` as it is (no validation on the way)."""

    def edit(text: str) -> str:
        raw = yaml.safe_load(text)
        *parents, last = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[last] = value
        return yaml.safe_dump(raw, sort_keys=False)

    return edit


def append(extra: str) -> Callable[[str], str]:
    return lambda text: text + extra


def replace(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)

    return edit


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")

CASES = [
    # trainer: each key as Lightning parses it (its registries and parsers)
    ("devices-zero", set_raw("trainer.devices", 0), ["trainer.devices", "must not be 0"]),
    ("devices-minus-one-on-cpu", set_raw("trainer.devices", -1), ["trainer.devices", "an int > 0"]),
    ("devices-list-on-cpu", set_raw("trainer.devices", [0, 1]), ["trainer.devices", "processes"]),
    ("devices-yes", set_raw("trainer.devices", True), ["trainer.devices", "yes/no"]),
    ("num-nodes-zero", set_raw("trainer.num_nodes", 0), ["trainer.num_nodes", "greater than"]),
    (
        "precision-unknown",
        set_raw("trainer.precision", "8-true"),
        ["trainer.precision", "unknown precision '8-true'", "bf16-mixed"],
    ),
    (
        "precision-16-true",
        set_raw("trainer.precision", "16-true"),
        [
            "trainer.precision",
            "16-true keeps the weights and AdamW's state in float16",
            "bf16-true",
        ],
    ),
    (
        "accelerator-unknown",
        set_raw("trainer.accelerator", "gpux"),
        ["trainer.accelerator", "unknown accelerator 'gpux'", "cuda"],
    ),
    (
        "strategy-unknown",
        set_raw("trainer.strategy", "ddp_fast"),
        ["trainer.strategy", "unknown strategy 'ddp_fast'", "ddp_spawn"],
    ),
    # trainer: what only the machine can say, through a Trainer Lightning builds
    pytest.param(
        "accelerator-not-on-this-machine",
        set_raw("trainer.accelerator", "cuda"),
        ["trainer: Lightning refuses these settings on this machine", "accelerator='cuda'"],
        marks=NO_CUDA,
    ),
    (
        "strategy-needs-a-gpu",
        set_raw("trainer.strategy", "fsdp"),
        ["trainer: Lightning refuses", "strategy='fsdp'", "requires a GPU accelerator"],
    ),
    # names MLflow validates, by its own validators
    (
        "model-name-with-slash",
        set_raw("register.model_name", "team/siamese"),
        ["register.model_name", "'team/siamese'", "cannot contain '/' or ':'"],
    ),
    (
        "model-name-with-colon",
        set_raw("register.model_name", "team:siamese"),
        ["register.model_name", "cannot contain '/' or ':'"],
    ),
    (
        "model-name-breaking-its-uri",
        set_raw("register.model_name", "siamese?v2"),
        ["register.model_name", "models:/siamese?v2@champion", "does not read back"],
    ),
    (
        "model-name-blank",
        set_raw("register.model_name", "   "),
        ["register.model_name", "MLflow refuses"],
    ),
    (
        "experiment-name-too-long",
        set_raw("register.experiment", "x" * 501),
        ["register.experiment", "MLflow refuses", "500"],
    ),
    (
        "hard-negatives-from-bad-alias",
        set_raw("mine.hard_negatives_from", "models:/siamese-digits@best.one"),
        ["mine.hard_negatives_from", "Invalid alias name: 'best.one'"],
    ),
    # a key given twice: YAML would silently keep the last one
    (
        "section-given-twice",
        append("train:\n  lr: 0.1\n"),
        ["params.yaml gives a key twice", "  train: given twice (line", "merge their sections"],
    ),
    (
        "nested-key-given-twice",
        replace("  max_epochs:", "  max_epochs: 3\n  max_epochs:"),
        ["train.max_epochs: given twice (line"],
    ),
    (
        "key-given-twice-inside-a-list",
        set_raw("augment", "PLACEHOLDER"),  # then made a list holding a repeated key, below
        ["augment[0].params.scale: given twice (line", "column"],
    ),
    # not a mapping at the top level
    (
        "params-a-list",
        lambda text: "- seed: 1\n- seed: 2\n",
        ["params file params.yaml must hold a mapping", "not a list", "git checkout"],
    ),
    (
        "params-a-number",
        lambda text: "42\n",
        ["params file params.yaml must hold a mapping", "not a number"],
    ),
]


def _case(param):
    return param if isinstance(param, type(pytest.param())) else pytest.param(*param, id=param[0])


def _edit(case: str, edit: Callable[[str], str], text: str) -> str:
    out = edit(text)
    if case == "key-given-twice-inside-a-list":
        out = out.replace(
            "augment: PLACEHOLDER",
            "augment:\n- name: Affine\n  params: {scale: 1.0, scale: 1.1}",
        )
    return out


def snapshot(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.parts
    }


def _assert_refused(result, says: list[str]) -> None:
    out = result.output
    assert result.exit_code == 2, out
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert "Traceback" not in out, out
    message = out[out.index("error: ") :]
    for text in says:
        assert text in message, message


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A folder holding the shipped params.yaml (all that check and a refused run read)."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def no_flow(monkeypatch):
    """``siamese run`` must refuse before the orchestrator: entering the flow fails the test."""
    import pipelines.flow

    def entered(**kwargs):
        raise AssertionError(f"the flow started despite invalid params: {kwargs}")

    monkeypatch.setattr(pipelines.flow, "training_flow", entered)


@pytest.mark.parametrize("case, edit, says", [_case(c) for c in CASES])
def test_check_and_run_refuse_before_any_stage(project, no_flow, case, edit, says):
    path = project / "params.yaml"
    path.write_text(_edit(case, edit, path.read_text()))
    before, files = path.read_bytes(), snapshot(project)

    _assert_refused(runner.invoke(app, ["check"]), says)
    _assert_refused(runner.invoke(app, ["run", "--set", "seed=7", "--no-push"]), says)

    assert path.read_bytes() == before  # the --set was not applied either
    assert snapshot(project) == files  # no artifacts/, no mlflow.db, no DVC or flow state
    assert not (project / "artifacts").exists() and not (project / "mlflow.db").exists()


@pytest.mark.parametrize(
    "override, says",
    [
        ("trainer.devices=0", ["trainer.devices", "must not be 0"]),
        ("register.model_name=team/siamese", ["register.model_name", "cannot contain '/'"]),
        ("train.margin={a: 1, a: 2}", ["override 'train.margin={a: 1, a: 2}'", "train.margin.a"]),
    ],
)
def test_run_refuses_a_bad_override_before_any_stage(project, no_flow, override, says):
    before = (project / "params.yaml").read_bytes()
    _assert_refused(runner.invoke(app, ["run", "--set", override, "--no-push"]), says)
    assert (project / "params.yaml").read_bytes() == before
    assert not (project / "artifacts").exists()


def test_the_train_stage_refuses_before_recording_anything(project):
    """``dvc repro`` calls the stages without ``siamese run``: the train stage makes the same
    checks before it reads data or opens an MLflow run."""
    path = project / "params.yaml"
    path.write_text(set_raw("register.model_name", "team/siamese")(path.read_text()))
    _assert_refused(runner.invoke(app, ["train"]), ["register.model_name"])
    path.write_text(set_raw("trainer.precision", "8-true")(path.read_text()))
    _assert_refused(runner.invoke(app, ["train"]), ["trainer.precision"])
    assert not (project / "mlflow.db").exists() and not (project / "artifacts").exists()


def test_a_refused_mining_reference_is_not_taken_for_a_missing_champion(project):
    """A reference URI MLflow refuses is a params error: mine does not fall back to random
    negatives as it does when the champion does not exist yet."""
    path = project / "params.yaml"
    path.write_text(set_raw("mine.hard_negatives_from", "models:/a/b/c")(path.read_text()))
    _assert_refused(runner.invoke(app, ["check"]), ["mine.hard_negatives_from", "models:/a/b/c"])


def test_precision_16_mixed_on_the_cpu_is_run_as_bf16_mixed_with_a_note(project):
    """Lightning maps 16-mixed to bf16-mixed on the CPU (fp16 autocast has no CPU kernels) and
    warns; ``siamese check`` accepts it and passes the note on."""
    path = project / "params.yaml"
    path.write_text(set_raw("trainer.precision", "16-mixed")(path.read_text()))
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 0, result.output
    assert "note: Lightning:" in result.output and "bf16-mixed" in result.output


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true", "64-true", 16])
def test_every_precision_lightning_takes_on_the_cpu_passes_check(project, precision):
    path = project / "params.yaml"
    path.write_text(set_raw("trainer.precision", precision)(path.read_text()))
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("content", ["", "# only a comment\n\n# and another\n", "null\n"])
def test_set_on_an_empty_params_file_starts_the_mapping_and_keeps_comments(tmp_path, content):
    """An empty params.yaml is {} (all defaults) for ``siamese check`` and for ``--set`` alike:
    the overrides become the file's first keys, its comments kept above them."""
    from siamese.config import Params, load_params
    from siamese.params_file import set_params

    path = tmp_path / "params.yaml"
    path.write_text(content)
    assert load_params(path) == Params()  # all defaults
    params = set_params(path, ["train.loss=triplet", "train.miner=semi_hard"])
    assert (params.train.loss, params.train.miner) == ("triplet", "semi_hard")
    text = path.read_text()
    assert yaml.safe_load(text) == {"train": {"loss": "triplet", "miner": "semi_hard"}}
    for line in content.splitlines():
        if line.startswith("#"):
            assert line in text
    assert load_params(path).train.loss == "triplet"


def test_set_on_a_non_mapping_params_file_is_refused_without_writing(tmp_path):
    from siamese.errors import ParamsError
    from siamese.params_file import set_params

    path = tmp_path / "params.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="must hold a mapping of keys to values"):
        set_params(path, ["train.lr=0.1"])
    assert path.read_text() == "- 1\n- 2\n"


def test_merge_keys_are_not_duplicates(tmp_path):
    """``<<: *base`` then a key of base overrides it on purpose: not a repeated key."""
    from siamese.config import load_yaml

    text = "base: &b {lr: 0.1, margin: 0.5}\ntrain:\n  <<: *b\n  lr: 0.2\n"
    assert load_yaml(text, "t")["train"] == {"lr": 0.2, "margin": 0.5}


def test_the_registry_aliases_are_names_mlflow_accepts():
    from mlflow.utils.validation import (
        _validate_model_alias_name,
        _validate_model_alias_name_reserved,
    )

    from siamese.registry.aliases import CHALLENGER, CHAMPION

    for alias in (CHAMPION, CHALLENGER):
        _validate_model_alias_name(alias)
        _validate_model_alias_name_reserved(alias)
