"""Encoders a practitioner would choose: the built-in ResNets (resnet12, resnet18, resnet34),
any torch module (``python:package.module:factory``), timm (``timm:<name>``) where it imports,
pretrained weights, a frozen or slower backbone, and the package that serves exactly the trained
network, in process and in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from siamese import paths
from siamese.config import validate_params
from siamese.errors import ParamsError
from siamese.models.encoders import (
    ENCODERS,
    SiameseEncoder,
    build_encoder,
    external,
    projection_of,
)
from siamese.models.encoders.dropblock import DropBlock2d
from siamese.params_file import set_params
from tests.helpers.params import QUICK

# small widths: the ResNets' code paths at a fraction of their cost
SMALL = {"resnet12": "[8, 16, 16, 32]", "resnet18": "[8, 8, 16, 16]", "resnet34": "[8, 8, 16, 16]"}


def _timm_unusable() -> str | None:
    """Why timm cannot be used here (None where it can)."""
    try:
        import timm  # noqa: F401
    except (ImportError, RuntimeError) as err:
        return f"timm cannot be imported here ({type(err).__name__}: {err})"
    return None


TIMM_UNUSABLE = _timm_unusable()


# ---------------------------------------------------------------------------------------------
# the built-in networks


def _params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_builtin_resnets_have_their_published_shape_and_keep_small_images():
    # the published sizes: ResNet-12 (64-160-320-640) 12.4 M, ResNet-18 11.2 M, ResNet-34 21.3 M
    # weights (without a classifier; here plus a 64-d projection)
    assert _params(build_encoder("resnet12", 84, 64, in_channels=3)) == pytest.approx(12.47e6, 0.01)
    assert _params(build_encoder("resnet18", 32, 64, in_channels=3)) == pytest.approx(11.2e6, 0.01)
    assert _params(build_encoder("resnet34", 32, 64, in_channels=3)) == pytest.approx(21.3e6, 0.01)
    # the small-input stem keeps a 28 px image whole: 28 -> 28 -> 14 -> 7 -> 4 over the stages
    net = build_encoder("resnet18", 28, 16, encoder_args={"widths": [4, 4, 4, 4]})
    feats = net.features(net.stem(torch.zeros(1, 1, 28, 28)))
    assert feats.shape[-2:] == (4, 4)
    # ResNet-12: three convs per stage, a max-pool per stage (28 -> 14 -> 7 -> 3 -> 1)
    net = build_encoder("resnet12", 28, 16, encoder_args={"widths": [4, 5, 6, 7]})
    assert net.features(torch.zeros(1, 1, 28, 28)).shape == (1, 7, 1, 1)
    convs = [m for m in net.features[0].body if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3
    assert (
        isinstance(net.features[0].act, torch.nn.LeakyReLU)
        and net.features[0].act.negative_slope == 0.1
    )
    for name in ENCODERS:  # every built-in ends in the projection `head`
        head = projection_of(build_encoder(name, 16, 12, channels=4))
        assert isinstance(head, torch.nn.Linear) and head.out_features == 12, name


def test_dropblock_drops_blocks_in_training_only():
    torch.manual_seed(0)
    drop = DropBlock2d(drop_prob=0.3, block_size=3)
    x = torch.ones(4, 8, 12, 12)
    out = drop(x)
    zeros = (out == 0).float().mean().item()
    assert 0.15 < zeros < 0.45  # about drop_prob of the activations, in blocks
    assert torch.allclose(out.mean(), x.mean(), atol=0.1)  # rescaled
    drop.eval()
    assert torch.equal(drop(x), x)
    net = build_encoder(
        "resnet12", 16, 8, encoder_args={"widths": [4, 4, 4, 4], "drop_block": {"drop_prob": 0.2}}
    )
    assert sum(isinstance(m, DropBlock2d) for m in net.modules()) == 2  # the last two stages


# ---------------------------------------------------------------------------------------------
# bad params: each a clear error naming the key


FACTORIES = '''
import torch
from torch import nn


class Tiny(nn.Module):
    """A user's encoder: a conv, a global pool and its projection `head`."""

    def __init__(self, in_channels, embedding_dim, width):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, embedding_dim)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def tiny(in_channels, image_size, embedding_dim, width=8):
    return Tiny(in_channels, embedding_dim, width)


def not_a_module(in_channels, image_size, embedding_dim):
    return "a string"


def wrong_size(in_channels, image_size, embedding_dim):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(embedding_dim + 1))


NOT_CALLABLE = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    """A user's module of encoder factories, importable as ``my_encoders`` (and not otherwise:
    it lives in a temporary folder put on the path)."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "my_encoders.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(folder))
    yield "my_encoders"
    sys.modules.pop("my_encoders", None)


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ({"encoder": "resnet50"}, "unknown encoder 'resnet50'; allowed: conv4, mlp, resnet12"),
        ({"encoder": "python:no_such_module_x:make"}, "'no_such_module_x' cannot be imported"),
        ({"encoder": "python:not a path"}, "must look like python:package.module:factory"),
        ({"encoder": "python:my_encoders:missing"}, "has no attribute 'missing'"),
        ({"encoder": "python:my_encoders:NOT_CALLABLE"}, "is a int, not a callable factory"),
        ({"encoder": "resnet12", "encoder_args": {"depth": 3}}, "depth not taken by encoder"),
        ({"encoder": "conv4", "pretrained": "no/such/weights.pt"}, "does not exist"),
    ],
)
def test_bad_encoder_params_name_the_key(model, says, user_module):
    with pytest.raises(ParamsError) as err:
        validate_params({"model": model})
    msg = str(err.value)
    assert "model" in msg and says in msg, msg


@pytest.mark.parametrize(
    ("factory", "says"),
    [
        ("not_a_module", "returned a str, not a torch nn.Module"),
        ("wrong_size", "to (B, 16) embeddings (model.embedding_dim); a batch of 2 gave (2, 17)"),
    ],
)
def test_a_factory_that_returns_no_fitting_module_is_refused_naming_the_key(
    factory, says, user_module
):
    spec = f"python:{user_module}:{factory}"
    params = validate_params({"model": {"encoder": spec, "embedding_dim": 16}})
    with pytest.raises(ParamsError) as err:
        SiameseEncoder(spec, 16, 16, 8, True, encoder_args=params.model.encoder_args)
    assert f"model.encoder {spec!r}" in str(err.value) and says in str(err.value)


def test_bad_encoder_args_values_name_the_key():
    with pytest.raises(ParamsError, match=r"model.encoder_args of encoder resnet12: widths must"):
        build_encoder("resnet12", 16, 8, encoder_args={"widths": [8, 8]})


def test_a_module_that_cannot_travel_as_code_is_refused():
    with pytest.raises(ParamsError, match="cannot travel with the registered model as code"):
        external.code_paths("python:math:floor")  # a built-in module: no source file
    assert external.code_paths("python:siamese.models.encoders.conv4:conv4") == []  # shipped


def test_a_pretrained_file_that_is_not_a_state_dict_is_refused(tmp_path):
    from siamese.models.pretrained import read_state_dict

    cases = {
        "text.pt": lambda p: p.write_text("not weights"),
        "list.pt": lambda p: torch.save([torch.zeros(2)], p),
        "object.pt": lambda p: torch.save({"net": torch.nn.Linear(2, 2)}, p),  # pickled module
        "broken.safetensors": lambda p: p.write_bytes(b"\x00" * 20),
    }
    for name, write in cases.items():
        path = tmp_path / name
        write(path)
        with pytest.raises(ParamsError) as err:
            read_state_dict(path)
        assert "model.pretrained" in str(err.value) and str(path) in str(err.value), name


# ---------------------------------------------------------------------------------------------
# timm


@pytest.mark.skipif(TIMM_UNUSABLE is not None, reason=TIMM_UNUSABLE or "")
def test_a_timm_encoder_is_built_with_the_images_channels_and_embedding_size():
    net = build_encoder("timm:resnet18", 32, 24, in_channels=3)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 24)
    assert external.requirements("timm:resnet18")[0].startswith("timm")


@pytest.mark.skipif(TIMM_UNUSABLE is None, reason="timm imports here")
def test_timm_where_it_cannot_be_used_is_refused_saying_why():
    with pytest.raises(ParamsError) as err:
        validate_params({"model": {"encoder": "timm:resnet18"}})
    msg = str(err.value)
    assert "model.encoder timm:<name> needs timm, which cannot be used here" in msg, msg
    assert "siamese[timm]" in msg


# ---------------------------------------------------------------------------------------------
# pretrained weights, freezing and the backbone's learning rate


def _resnet12_module(**model):
    """The training module of a small resnet12 (model.* overridden by ``model``)."""
    from siamese.training.module import SiameseModule

    params = validate_params(
        {
            "data": {"image_size": 16},
            "model": {
                "encoder": "resnet12",
                "encoder_args": {"widths": [4, 6, 8, 10]},
                "embedding_dim": 8,
                **model,
            },
        }
    )
    return SiameseModule(params)


def test_pretrained_weights_load_bit_identically(tmp_path):
    torch.manual_seed(1)
    source = _resnet12_module().encoder.net
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    save_file({k: v.contiguous() for k, v in backbone.items()}, tmp_path / "w.safetensors")
    torch.save(source.state_dict(), tmp_path / "w.pt")  # with the projection
    for name in ("w.safetensors", "w.pt"):
        torch.manual_seed(2)
        net = _resnet12_module(pretrained=str(tmp_path / name)).encoder.net
        loaded = net.state_dict()
        for k, v in backbone.items():
            assert torch.equal(loaded[k], v), (name, k)
        # the projection comes from the file when it has one, else stays as initialised
        assert torch.equal(loaded["head.weight"], source.state_dict()["head.weight"]) == (
            name == "w.pt"
        )


def test_a_mismatched_pretrained_file_fails_naming_the_keys_unless_not_strict(tmp_path, caplog):
    torch.manual_seed(1)
    state = _resnet12_module().encoder.net.state_dict()
    state["extra.weight"] = torch.zeros(3)
    del state["features.0.shortcut.0.weight"]
    state["features.3.body.0.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ParamsError) as err:
        _resnet12_module(pretrained=str(tmp_path / "bad.pt"))
    msg = str(err.value)
    assert "model.pretrained" in msg, msg
    for key in ("features.0.shortcut.0.weight", "extra.weight", "features.3.body.0.weight"):
        assert key in msg, msg
    with caplog.at_level("INFO", logger="siamese.models.pretrained"):
        net = _resnet12_module(pretrained=str(tmp_path / "bad.pt"), pretrained_strict=False)
    lines = [r.getMessage() for r in caplog.records if "model.pretrained" in r.getMessage()]
    assert len(lines) == 1 and "extra.weight" in lines[0], lines
    assert torch.equal(net.encoder.net.state_dict()["head.weight"], state["head.weight"])


def test_backbone_lr_scale_gives_the_backbone_its_own_learning_rate():
    from siamese.config import apply_overrides

    module = _resnet12_module()
    module.p = validate_params(
        apply_overrides(module.p.model_dump(), ["train.backbone_lr_scale=0.1", "train.lr=0.01"])
    )
    module.backbone = list(
        p for n, p in module.encoder.net.named_parameters() if not n.startswith("head.")
    )
    opt = module.configure_optimizers()["optimizer"]
    backbone, rest = opt.param_groups
    assert backbone["lr"] == pytest.approx(0.001) and rest["lr"] == pytest.approx(0.01)
    head = {id(p) for p in module.encoder.net.head.parameters()}
    assert head <= {id(p) for p in rest["params"]}
    assert not head & {id(p) for p in backbone["params"]}
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# the package rebuilds exactly the trained network


@pytest.mark.parametrize(
    ("encoder", "args", "channels"),
    [
        ("resnet12", {"widths": [4, 6, 8, 10], "drop_block": {"drop_prob": 0.1}}, 3),
        ("resnet18", {"widths": [4, 4, 8, 8]}, 1),
        ("python:my_encoders:tiny", {"width": 5}, 3),
    ],
)
def test_the_package_serves_exactly_the_network_it_was_given(
    encoder, args, channels, user_module, tmp_path
):
    """A saved encoder (as training exports it) packaged and loaded by MLflow in process: the
    same spec, weights and embeddings; a python: module travels as code."""
    import mlflow

    from siamese.data.images import encode_png
    from siamese.models.loading import embed, load_encoder, save_encoder
    from siamese.registry.package import save_package

    torch.manual_seed(0)
    enc = SiameseEncoder(encoder, [20, 16], 8, 4, True, in_channels=channels, encoder_args=args)
    enc.train()
    enc(torch.randn(8, channels, 20, 16))  # batch-norm statistics away from their defaults
    save_encoder(enc.eval(), tmp_path)
    calibration = {"strategy": "eer", "threshold": 0.5, "probability": {"method": "none"}}
    pkg = save_package(tmp_path / "pkg", tmp_path, calibration, None)
    config = json.loads((pkg / "artifacts" / "encoder" / "model.json").read_text())
    assert (config["encoder"], config["encoder_args"]) == (encoder, args)
    code = sorted(p.name for p in (pkg / "code").iterdir())
    assert code == (["my_encoders.py", "siamese"] if encoder.startswith("python:") else ["siamese"])
    model = mlflow.pyfunc.load_model(str(pkg)).unwrap_python_model()
    for k, v in load_encoder(tmp_path).state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v), k
    images = np.random.default_rng(0).integers(0, 256, (4, 20, 16, channels), dtype=np.uint8)
    served = model.predict(
        None, pd.DataFrame({"image": [encode_png(i) for i in images]}), params={"mode": "embed"}
    )
    expected = embed(load_encoder(tmp_path), images)
    np.testing.assert_allclose(np.stack(served["embedding"]), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# train -> register -> serve


def _train_and_register(project: Path, overrides: list[str]) -> dict:
    """prepare -> ... -> evaluate -> register (as challenger; promote is not what is tested)."""
    from tests.helpers.stages import run_register_stage, run_stages_until_evaluate

    params = set_params(project / "params.yaml", [*QUICK, *overrides])
    run_stages_until_evaluate(params)
    return run_register_stage(params)


def _served_answers_like_the_trained_encoder(uri: str, images: np.ndarray) -> pd.DataFrame:
    """The served model (in process, loaded by URI) embeds as the exported encoder does."""
    from siamese.data.images import encode_png
    from siamese.models.loading import embed, load_encoder
    from siamese.registry.loading import load_served_model

    encoder = load_encoder(paths.TRAIN)
    model = load_served_model(uri)
    assert model.encoder.config == encoder.config
    for k, v in encoder.state_dict().items():  # exactly the trained network
        assert torch.equal(model.encoder.state_dict()[k], v), k
    files = [encode_png(img) for img in images]
    out = model.predict(None, pd.DataFrame({"image": files}), params={"mode": "embed"})
    np.testing.assert_allclose(
        np.stack(out["embedding"]), embed(encoder, images), rtol=1e-5, atol=1e-6
    )
    return model.predict(None, pd.DataFrame({"image_a": files[:3], "image_b": files[3:6]}))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("encoder", "extra"),
    [
        (
            "resnet12",
            ["trainer.precision=bf16-mixed", "train.loss=triplet", "train.miner=batch_all"],
        ),
        ("resnet18", ["train.freeze_backbone_epochs=1", "train.backbone_lr_scale=0.5"]),
    ],
)
def test_resnets_train_register_and_serve_on_digits(encoder, extra, project):
    from siamese.data.artifacts import PreparedData
    from siamese.io import read_json

    result = _train_and_register(
        project,
        [f"model.encoder={encoder}", f"model.encoder_args={{widths: {SMALL[encoder]}}}", *extra],
    )
    config = read_json(Path(paths.TRAIN) / "model.json")
    assert config["encoder"] == encoder
    assert config["encoder_args"] == {"widths": json.loads(SMALL[encoder])}
    images = PreparedData(paths.PREPARED).images[:6]
    _served_answers_like_the_trained_encoder(result["model_uri"], images)


def test_a_frozen_backbone_keeps_its_pretrained_weights_while_the_projection_trains(
    project, tmp_path
):
    from siamese.models.loading import load_encoder

    torch.manual_seed(3)
    net = build_encoder("resnet12", 16, 16, 8, 1, {"widths": [4, 4, 8, 8]})
    start = {k: v.clone() for k, v in net.state_dict().items()}
    torch.save(start, tmp_path / "pretrained.pt")
    from tests.helpers.stages import run_stages_until_evaluate

    params = set_params(
        project / "params.yaml",
        [
            *QUICK,
            "model.encoder=resnet12",
            "model.encoder_args={widths: [4, 4, 8, 8]}",
            f"model.pretrained={tmp_path / 'pretrained.pt'}",
            "train.freeze_backbone_epochs=1",
            "train.monitor=last",
        ],
    )
    run_stages_until_evaluate(params)
    trained = load_encoder(paths.TRAIN).net.state_dict()
    for k, v in start.items():
        if k.startswith("head."):
            assert not torch.equal(trained[k], v), k  # the projection trained
        else:  # weights and batch-norm statistics alike
            assert torch.equal(trained[k], v), k


@pytest.mark.slow
def test_a_python_factory_trains_registers_and_serves_in_a_fresh_process(
    project, user_module, tmp_path
):
    """The factory's module lives only in a temporary folder on this process's path: the
    fresh process can load the model by URI only because the module travelled with it."""
    from siamese.data.artifacts import PreparedData
    from siamese.data.images import encode_png
    from siamese.registry.tracking import tracking_uri

    spec = f"python:{user_module}:tiny"
    result = _train_and_register(
        project, [f"model.encoder={spec}", "model.encoder_args={width: 6}"]
    )
    images = PreparedData(paths.PREPARED).images[:6]
    here = _served_answers_like_the_trained_encoder(result["model_uri"], images)

    frame = tmp_path / "pairs.json"
    files = [encode_png(img).hex() for img in images]
    frame.write_text(json.dumps({"a": files[:3], "b": files[3:6]}))
    script = textwrap.dedent(
        f"""
        import json, sys
        import mlflow, pandas as pd
        assert "my_encoders" not in sys.modules
        raw = json.load(open({str(frame)!r}))
        df = pd.DataFrame({{"image_a": [bytes.fromhex(h) for h in raw["a"]],
                            "image_b": [bytes.fromhex(h) for h in raw["b"]]}})
        out = mlflow.pyfunc.load_model({result["model_uri"]!r}).predict(df)
        print(json.dumps(out["distance"].tolist()))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # the project's own source only (the worktree under test), never the user's folder
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    env["MLFLOW_TRACKING_URI"] = tracking_uri()
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    served = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(served, here["distance"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["resnet12", "resnet18"])
def test_resnets_train_register_and_serve_on_colour_lfw(encoder, lfw, project, tmp_path):
    from siamese.data.artifacts import PreparedData
    from tests.test_colour import COLOUR_PARAMS, lfw_subset

    faces = lfw_subset(lfw, tmp_path / "lfw", people=24, per_person=4)
    result = _train_and_register(
        project,
        [
            f"data.source={faces}",
            *COLOUR_PARAMS,
            f"model.encoder={encoder}",
            f"model.encoder_args={{widths: {SMALL[encoder]}}}",
        ],
    )
    images = PreparedData(paths.PREPARED).images[:6]
    assert images.shape[-1] == 3
    _served_answers_like_the_trained_encoder(result["model_uri"], images)


@pytest.mark.slow
def test_compiled_conv4_trains_and_exports_the_plain_network(project):
    from siamese.models.loading import load_encoder
    from tests.helpers.stages import run_stages_until_evaluate

    params = set_params(project / "params.yaml", [*QUICK, "model.compile=true"])
    run_stages_until_evaluate(params)
    encoder = load_encoder(paths.TRAIN)  # the plain network's keys: no _orig_mod prefix
    assert all("_orig_mod" not in k for k in encoder.state_dict())
