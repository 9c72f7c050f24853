"""Encoder registry. Siamese twins share one encoder, so the model is just this network plus a
distance; it is chosen by name in params.yaml (model.encoder)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from siamese.data.images import ImageSpec
from siamese.distances import pair_distance, pairwise_distance
from siamese.models.heads import build_head, head_distance

# model.encoder: filled by @register below; the config's allowed values
ENCODERS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        ENCODERS[name] = fn
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


Size = int | tuple[int, int] | list[int]  # image_size: S (square) or (H, W)


def _sides(image_size: Size) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


class Conv4(nn.Module):
    """The Conv-4 backbone of the few-shot literature (4 x conv3x3-BN-ReLU-pool) plus a linear
    projection to the embedding. Pooling stops once the shorter side is 1, so small inputs still
    work; the flatten size follows from H and W, so wide images work too.

    ``channels`` is the conv width; ``in_channels`` the image's channels (1 gray, 3 RGB)."""

    def __init__(
        self, image_size: Size, embedding_dim: int, channels: int = 64, in_channels: int = 1
    ):
        super().__init__()
        (height, width), c_in = _sides(image_size), in_channels
        blocks = []
        for _ in range(4):
            pool = min(height, width) >= 2
            blocks.append(_block(c_in, channels, pool))
            if pool:
                height, width = height // 2, width // 2
            c_in = channels
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(channels * height * width, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


@register("conv4")
def conv4(
    image_size: Size, embedding_dim: int, channels: int = 64, in_channels: int = 1
) -> nn.Module:
    return Conv4(image_size, embedding_dim, channels, in_channels)


@register("mlp")
def mlp(
    image_size: Size, embedding_dim: int, channels: int = 64, in_channels: int = 1
) -> nn.Module:
    """A small fully connected encoder: a cheap baseline and fast test double of real size."""
    hidden = channels * 4
    height, width = _sides(image_size)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * height * width, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, embedding_dim),
    )


def build_encoder(
    name: str, image_size: Size, embedding_dim: int, channels: int = 64, in_channels: int = 1
) -> nn.Module:
    """Encoder ``name`` for ``in_channels`` x H x W inputs (``image_size``: S or (H, W));
    ``channels`` is its conv width (model.channels)."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; available: {', '.join(sorted(ENCODERS))}")
    return ENCODERS[name](
        image_size=image_size,
        embedding_dim=embedding_dim,
        channels=channels,
        in_channels=in_channels,
    )


LEARNED_DISTANCE = "learned"


class SiameseEncoder(nn.Module):
    """The shared encoder with its output normalisation and, optionally, a learned similarity
    head: everything both twins run, and the one place that turns two embeddings into a
    distance, so training, calibration, evaluation and serving cannot disagree."""

    def __init__(
        self,
        encoder: str,
        image_size: Size,
        embedding_dim: int,
        channels: int,
        normalize: bool,
        distance: str = "euclidean",
        head: str | None = None,
        in_channels: int = 1,
        resize: str = "stretch",
    ):
        super().__init__()
        # the images it takes, stored with it (model.json, the package) so every consumer
        # decodes and resizes exactly as training did; validated here
        image = ImageSpec.of(image_size, in_channels, resize)
        self.config = {
            "encoder": encoder,
            "image_size": image.size,
            "in_channels": image.channels,
            "resize": image.resize,
            "embedding_dim": embedding_dim,
            "channels": channels,
            "normalize": normalize,
            # the distance it was trained (and must be served) with
            "distance": LEARNED_DISTANCE if head else distance,
            "head": head,
        }
        self.image = image
        self.net = build_encoder(
            encoder, (image.height, image.width), embedding_dim, channels, image.channels
        )
        self.normalize = normalize
        self.head = build_head(head, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        return nn.functional.normalize(z, dim=1) if self.normalize else z

    def pair_logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The head's logit of p(same) per row; only for models with a head."""
        if self.head is None:
            raise ValueError("this encoder has no similarity head (model trained without bce)")
        return self.head(a, b)

    def pair_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Row-wise distance between embedding batches under this model's metric."""
        if self.head is not None:
            return head_distance(self.head(a, b))
        return pair_distance(a, b, self.config["distance"])

    def distance_matrix(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """(len(x), len(y)) distances under this model's metric (one-shot, retrieval, search).
        A head needs |x_i - y_j| per pair, so it is evaluated in row chunks to bound memory."""
        if self.head is None:
            return pairwise_distance(x, y, self.config["distance"])
        rows = []
        for i in range(0, len(x), chunk):
            xi = x[i : i + chunk]
            logits = (xi[:, None, :] - y[None, :, :]).abs() @ self.head.weight.to(x.dtype)
            rows.append(head_distance(logits + self.head.bias.to(x.dtype)))
        return torch.cat(rows) if rows else x.new_zeros((0, len(y)))


def preprocess(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [-1, 1]; used for training and serving
    alike. (N, H, W) is read as C = 1 (prepared data written before colour existed)."""
    x = images_uint8 if images_uint8.ndim == 4 else images_uint8.unsqueeze(-1)
    return x.float().div(127.5).sub(1.0).permute(0, 3, 1, 2).contiguous()
