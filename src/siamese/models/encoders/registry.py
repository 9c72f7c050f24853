"""model.encoder: the built-in encoders by name (the one source of truth for the choice list),
plus the ``python:package.module:factory`` and ``timm:<name>`` forms (siamese.models.encoders
.external). Every encoder maps (B, C, H, W) images to (B, model.embedding_dim) embeddings and
ends in a linear projection, ``head``: what train.freeze_backbone_epochs trains alone and
train.backbone_lr_scale leaves at the full learning rate; the rest is the backbone."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator

from torch import nn

from siamese.errors import ParamsError
from siamese.models.encoders import external
from siamese.models.encoders.conv4 import conv4
from siamese.models.encoders.mlp import mlp
from siamese.models.encoders.resnet import resnet18, resnet34
from siamese.models.encoders.resnet12 import resnet12
from siamese.models.encoders.shapes import Size, sides

# model.encoder's built-in choices
ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "conv4": conv4,
    "mlp": mlp,
    "resnet12": resnet12,
    "resnet18": resnet18,
    "resnet34": resnet34,
}
# what every built-in factory is given by the pipeline; the rest of its arguments are
# model.encoder_args
_GIVEN = ("image_size", "embedding_dim", "in_channels", "channels")
EXTERNAL_FORMS = ("python:package.module:factory", "timm:<name>")


def encoder_args_of(name: str) -> tuple[str, ...]:
    """The model.encoder_args a built-in encoder takes."""
    params = inspect.signature(ENCODERS[name]).parameters
    return tuple(p for p in params if p not in _GIVEN)


def check_encoder(name: str, encoder_args: dict) -> None:
    """model.encoder and model.encoder_args, checked without building the network: a built-in
    name and the arguments it takes, or an external form that can be used here."""
    if external.is_external(name):
        external.check_spec(name)
        return
    if name not in ENCODERS:
        raise ParamsError(
            f"model.encoder: unknown encoder {name!r}; allowed: {', '.join(ENCODERS)}, or "
            f"{' or '.join(EXTERNAL_FORMS)}"
        )
    allowed = encoder_args_of(name)
    unknown = sorted(set(encoder_args) - set(allowed))
    if unknown:
        raise ParamsError(
            f"model.encoder_args: {', '.join(unknown)} not taken by encoder {name}; allowed: "
            f"{', '.join(allowed) or 'none'}"
        )


def build_encoder(
    name: str,
    image_size: Size,
    embedding_dim: int,
    channels: int = 64,
    in_channels: int = 1,
    encoder_args: dict | None = None,
) -> nn.Module:
    """Encoder ``name`` for ``in_channels`` x H x W inputs (``image_size``: S or (H, W));
    ``channels`` is the conv width of conv4 and mlp (model.channels), ``encoder_args`` the
    encoder's own arguments (model.encoder_args)."""
    args = dict(encoder_args or {})
    height, width = sides(image_size)
    if external.is_external(name):
        return external.build_external(name, height, width, embedding_dim, in_channels, args)
    check_encoder(name, args)
    factory = ENCODERS[name]
    given = {"image_size": (height, width), "embedding_dim": embedding_dim}
    given["in_channels"] = in_channels
    if "channels" in inspect.signature(factory).parameters:
        given["channels"] = channels
    try:
        return factory(**given, **args)
    except (TypeError, ValueError) as err:
        raise ParamsError(f"model.encoder_args of encoder {name}: {err}") from None


def projection_of(net: nn.Module) -> nn.Module | None:
    """The encoder's final projection to the embedding: its ``head`` (every built-in has one;
    a python: factory's module may), or a timm model's classifier; None when there is none."""
    head = getattr(net, "head", None)
    if isinstance(head, nn.Module) and not isinstance(head, nn.Identity):
        return head
    get_classifier = getattr(net, "get_classifier", None)
    if callable(get_classifier):
        classifier = get_classifier()
        if isinstance(classifier, nn.Module):
            return classifier
    return None


def backbone_parameters(net: nn.Module, spec: str) -> Iterator[nn.Parameter]:
    """The encoder's parameters other than its projection's. A ParamsError when it has no
    projection to tell them apart by (a python: module without a ``head``)."""
    head = projection_of(net)
    if head is None:
        raise ParamsError(
            f"model.encoder {spec!r} has no projection layer to train apart from its backbone "
            "(train.freeze_backbone_epochs, train.backbone_lr_scale): give the module its final "
            "layer as the attribute `head`"
        )
    own = {id(p) for p in head.parameters()}
    return (p for p in net.parameters() if id(p) not in own)


def backbone_modules(net: nn.Module) -> Iterator[nn.Module]:
    """The encoder's submodules outside its projection (batch norms frozen with the backbone)."""
    head = projection_of(net)
    inside = {id(m) for m in head.modules()} if head is not None else set()
    return (m for m in net.modules() if id(m) not in inside and m is not net)
