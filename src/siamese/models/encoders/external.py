"""Encoders from outside the project: ``python:package.module:factory`` (any module a user's
factory builds) and ``timm:<name>`` (a timm model, where timm is installed).

A factory is called as ``factory(in_channels=C, image_size=(H, W), embedding_dim=D,
**model.encoder_args)`` and must return an ``nn.Module`` mapping (B, C, H, W) images to (B, D)
embeddings; both are checked on a dummy batch. The module's code travels with the registered
model (MLflow ``code_paths``: its file, or its top-level package's folder), so serving rebuilds
the trained network without the user's checkout; a timm encoder adds timm to the model's pip
requirements."""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from siamese.errors import ParamsError

PYTHON, TIMM = "python:", "timm:"
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
SHIPPED_PACKAGE = "siamese"  # shipped with every model already (siamese.registry.package)


def is_external(spec: str) -> bool:
    return spec.startswith((PYTHON, TIMM))


def parse_python(spec: str) -> tuple[str, str]:
    """(module, attribute) of ``python:package.module:factory``."""
    body = spec.removeprefix(PYTHON)
    module, sep, attr = body.rpartition(":")
    if not sep or not _DOTTED.match(module) or not _DOTTED.match(attr):
        raise ParamsError(
            f"model.encoder {spec!r} must look like python:package.module:factory (an importable "
            "module and the name of a function in it)"
        )
    return module, attr


def load_factory(spec: str) -> Callable[..., Any]:
    """The factory ``python:package.module:factory`` names, imported and checked callable."""
    module_name, attr = parse_python(spec)
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any import-time failure of user code is the user's to fix
        raise ParamsError(
            f"model.encoder {spec!r}: module {module_name!r} cannot be imported "
            f"({type(err).__name__}: {err}); is it on the Python path (PYTHONPATH, or an "
            "installed package)?"
        ) from None
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise ParamsError(
            f"model.encoder {spec!r}: module {module_name!r} has no attribute {attr!r}"
        ) from None
    if not callable(factory):
        raise ParamsError(
            f"model.encoder {spec!r}: {module_name}.{attr} is a {type(factory).__name__}, not a "
            "callable factory"
        )
    return factory


def timm_module():
    """timm, or a ParamsError saying why it cannot be used (not installed; or, as with the
    pinned CPU torch here, its torchvision dependency failing to load its operators)."""
    try:
        import timm
    except (ImportError, RuntimeError) as err:
        raise ParamsError(
            f"model.encoder timm:<name> needs timm, which cannot be used here "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); install "
            "the optional extra (pip install 'siamese[timm]', with a torchvision matching torch) "
            "or choose a built-in model.encoder"
        ) from None
    return timm


def check_output(net: nn.Module, spec: str, in_channels: int, height: int, width: int, dim: int):
    """A (2, C, H, W) dummy batch must give (2, D) embeddings (eval mode, no gradients, so
    batch-norm statistics are untouched)."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros((2, in_channels, height, width)))
    except Exception as err:
        raise ParamsError(
            f"model.encoder {spec!r} fails on a (2, {in_channels}, {height}, {width}) batch: "
            f"{type(err).__name__}: {err}"
        ) from None
    finally:
        net.train(was_training)
    shape = tuple(getattr(out, "shape", ()))
    if not isinstance(out, torch.Tensor) or shape != (2, dim):
        got = shape if isinstance(out, torch.Tensor) else type(out).__name__
        raise ParamsError(
            f"model.encoder {spec!r} must map (B, {in_channels}, {height}, {width}) images to "
            f"(B, {dim}) embeddings (model.embedding_dim); a batch of 2 gave {got}"
        )


def build_external(
    spec: str, height: int, width: int, embedding_dim: int, in_channels: int, args: dict
) -> nn.Module:
    """The network of a ``python:`` or ``timm:`` encoder, checked on a dummy batch."""
    if spec.startswith(PYTHON):
        factory = load_factory(spec)
        try:
            net = factory(
                in_channels=in_channels,
                image_size=(height, width),
                embedding_dim=embedding_dim,
                **args,
            )
        except TypeError as err:
            raise ParamsError(
                f"model.encoder {spec!r} cannot be called with in_channels, image_size, "
                f"embedding_dim and model.encoder_args {sorted(args)}: {err}"
            ) from None
        if not isinstance(net, nn.Module):
            raise ParamsError(
                f"model.encoder {spec!r} returned a {type(net).__name__}, not a torch nn.Module"
            )
    else:
        name = spec.removeprefix(TIMM)
        timm = timm_module()
        try:
            net = timm.create_model(
                name, pretrained=False, num_classes=embedding_dim, in_chans=in_channels, **args
            )
        except (RuntimeError, TypeError, ValueError) as err:
            raise ParamsError(f"model.encoder {spec!r}: timm cannot build it: {err}") from None
    check_output(net, spec, in_channels, height, width, embedding_dim)
    return net


def check_spec(spec: str) -> None:
    """Fail now (``siamese check``, every stage) when an external encoder cannot be built:
    a python: factory that does not import or is not callable, a timm: without timm."""
    if spec.startswith(PYTHON):
        load_factory(spec)
    elif spec.startswith(TIMM):
        if not spec.removeprefix(TIMM):
            raise ParamsError("model.encoder 'timm:' needs a model name, e.g. timm:resnet18")
        timm_module()


def code_paths(spec: str) -> list[Path]:
    """What must travel with a model of encoder ``spec`` for serving to import it: the
    ``python:`` module's file, or the folder of its top-level package; nothing for the others
    (and for modules of the siamese package, which is shipped already). A module that is not a
    plain source file or folder (built in, compiled, a namespace spread over folders) cannot
    travel: a ParamsError says so."""
    if not spec.startswith(PYTHON):
        return []
    module_name, _ = parse_python(spec)
    top = module_name.split(".")[0]
    if top == SHIPPED_PACKAGE:
        return []
    found = importlib.util.find_spec(top)
    why = None
    if found is None:
        why = "it cannot be found on the Python path"
    elif found.submodule_search_locations is not None:
        folders = list(found.submodule_search_locations)
        if len(folders) == 1:
            return [Path(folders[0]).resolve()]
        why = f"namespace package {top!r} spreads over {len(folders)} folders"
    elif found.origin and found.origin.endswith(".py") and Path(found.origin).is_file():
        return [Path(found.origin).resolve()]
    else:
        why = f"module {top!r} is not a Python source file ({found.origin})"
    raise ParamsError(
        f"model.encoder {spec!r} cannot travel with the registered model as code: {why}; put "
        "the factory in a .py file or a package folder on the Python path"
    )


def requirements(spec: str) -> list[str]:
    """Extra pip requirements of a model of encoder ``spec``: timm for a timm: encoder."""
    if not spec.startswith(TIMM):
        return []
    try:
        return [f"timm=={version('timm')}"]
    except PackageNotFoundError:
        return ["timm"]
