"""ResNet-18 and ResNet-34 (He et al. 2016; BasicBlock stages [2, 2, 2, 2] and [3, 4, 6, 3])
shaped for small inputs: the ImageNet stem (7x7 stride-2 conv and a 3x3 stride-2 max-pool)
would shrink a 28 px image to 7 px before the first block, so the stem here is one 3x3 stride-1
conv without max-pool (as the CIFAR ResNets). A global average pool and the linear projection
(``head``) to the embedding follow the four stages."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from siamese.models.encoders.shapes import Size

WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with ReLU and an identity (or 1x1 conv-BN) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """A BasicBlock ResNet with ``blocks`` per stage and ``widths`` per stage; the stages after
    the first halve the resolution (a stride-2 conv on a 1-pixel map keeps it 1 pixel)."""

    def __init__(
        self,
        blocks: Sequence[int],
        embedding_dim: int,
        in_channels: int = 1,
        widths: Sequence[int] = WIDTHS,
    ):
        super().__init__()
        if len(widths) != 4 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths must be 4 positive stage widths (got {list(widths)})")
        widths = [int(w) for w in widths]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages, c_in = [], widths[0]
        for i, (n, c_out) in enumerate(zip(blocks, widths, strict=True)):
            layers = [BasicBlock(c_in, c_out, 1 if i == 0 else 2)]
            layers += [BasicBlock(c_out, c_out, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, embedding_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(self.stem(x))).flatten(1))


def resnet18(
    image_size: Size, embedding_dim: int, in_channels: int = 1, widths: Sequence[int] = WIDTHS
) -> nn.Module:
    """model.encoder resnet18 (BasicBlock [2, 2, 2, 2]); model.encoder_args ``widths`` (default
    64-128-256-512). Any image size: the global pool ends it."""
    return ResNet((2, 2, 2, 2), embedding_dim, in_channels, widths)


def resnet34(
    image_size: Size, embedding_dim: int, in_channels: int = 1, widths: Sequence[int] = WIDTHS
) -> nn.Module:
    """model.encoder resnet34 (BasicBlock [3, 4, 6, 3]); model.encoder_args as resnet18."""
    return ResNet((3, 4, 6, 3), embedding_dim, in_channels, widths)
