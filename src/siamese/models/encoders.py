"""Encoder registry. Siamese twins share one encoder, so the model is just this network plus a
distance; it is chosen by name in params.yaml (model.encoder)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        return fn

    return deco


def _block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """The Conv-4 backbone of the few-shot literature (4 x conv3x3-BN-ReLU-pool) plus a linear
    projection to the embedding. Pooling stops once the map is 1x1, so small inputs still work."""

    def __init__(self, image_size: int, embedding_dim: int, channels: int = 64):
        super().__init__()
        blocks, side, c_in = [], image_size, 1
        for _ in range(4):
            pool = side >= 2
            blocks.append(_block(c_in, channels, pool))
            side = side // 2 if pool else side
            c_in = channels
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(channels * side * side, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


@register("conv4")
def conv4(image_size: int, embedding_dim: int, channels: int = 64) -> nn.Module:
    return Conv4(image_size, embedding_dim, channels)


@register("mlp")
def mlp(image_size: int, embedding_dim: int, channels: int = 64) -> nn.Module:
    """A small fully connected encoder: a cheap baseline and fast test double of real size."""
    hidden = channels * 4
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(image_size * image_size, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, embedding_dim),
    )


def build_encoder(name: str, image_size: int, embedding_dim: int, channels: int = 64) -> nn.Module:
    if name not in _REGISTRY:
        raise ValueError(f"unknown encoder {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](image_size=image_size, embedding_dim=embedding_dim, channels=channels)


class SiameseEncoder(nn.Module):
    """The shared encoder with its output normalisation: what both twins run."""

    def __init__(
        self,
        encoder: str,
        image_size: int,
        embedding_dim: int,
        channels: int,
        normalize: bool,
        distance: str = "euclidean",
    ):
        super().__init__()
        self.config = {
            "encoder": encoder,
            "image_size": image_size,
            "embedding_dim": embedding_dim,
            "channels": channels,
            "normalize": normalize,
            "distance": distance,  # the distance it was trained (and must be served) with
        }
        self.net = build_encoder(encoder, image_size, embedding_dim, channels)
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        return nn.functional.normalize(z, dim=1) if self.normalize else z


def preprocess(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S) -> float (N, 1, S, S) in [-1, 1]; used for training and serving alike."""
    return images_uint8.float().div(127.5).sub(1.0).unsqueeze(1)
