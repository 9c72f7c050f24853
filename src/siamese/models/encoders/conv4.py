"""Conv-4, the few-shot literature's small backbone: 4 x (conv3x3-BN-ReLU-maxpool) and a linear
projection of the flattened features to the embedding."""

from __future__ import annotations

import torch
from torch import nn

from siamese.models.encoders.shapes import Size, sides


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
    """The Conv-4 backbone (4 x conv3x3-BN-ReLU-pool) plus a linear projection (``head``) to the
    embedding. Pooling stops once the shorter side is 1, so small inputs still work; the flatten
    size follows from H and W, so wide images work too.

    ``channels`` is the conv width; ``in_channels`` the image's channels (1 gray, 3 RGB)."""

    def __init__(
        self, image_size: Size, embedding_dim: int, channels: int = 64, in_channels: int = 1
    ):
        super().__init__()
        (height, width), c_in = sides(image_size), in_channels
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


def conv4(
    image_size: Size, embedding_dim: int, channels: int = 64, in_channels: int = 1
) -> nn.Module:
    """model.encoder conv4; ``channels`` is model.channels."""
    return Conv4(image_size, embedding_dim, channels, in_channels)
