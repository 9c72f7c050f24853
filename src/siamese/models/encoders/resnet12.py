"""ResNet-12, the few-shot literature's standard backbone (Oreshkin et al. 2018, TADAM; Lee et
al. 2019, MetaOptNet): four residual stages of three 3x3 conv-BN layers with LeakyReLU(0.1), a
1x1 conv-BN shortcut, and a 2x2 max-pool after each stage; here followed by a global average
pool and the linear projection (``head``) to the embedding."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from siamese.models.encoders.dropblock import DropBlock2d
from siamese.models.encoders.shapes import Size, sides

WIDTHS = (64, 160, 320, 640)


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)]


class ResNet12Block(nn.Module):
    """conv-BN-LeakyReLU, conv-BN-LeakyReLU, conv-BN, plus the 1x1 shortcut; LeakyReLU, then
    the max-pool (skipped once the shorter side is 1) and DropBlock (when given)."""

    def __init__(self, c_in: int, c_out: int, pool: bool, drop: nn.Module | None = None):
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(c_in, c_out),
            nn.LeakyReLU(0.1),
            *_conv_bn(c_out, c_out),
            nn.LeakyReLU(0.1),
            *_conv_bn(c_out, c_out),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.drop = drop if drop is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.pool(self.act(self.body(x) + self.shortcut(x))))


class ResNet12(nn.Module):
    """ResNet-12 with ``widths`` per stage. ``drop_block`` (``{drop_prob, block_size}``) puts
    DropBlock after the last two stages, as MetaOptNet does; ``None``: none."""

    def __init__(
        self,
        image_size: Size,
        embedding_dim: int,
        in_channels: int = 1,
        widths: Sequence[int] = WIDTHS,
        drop_block: dict | None = None,
    ):
        super().__init__()
        if len(widths) != 4 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths must be 4 positive stage widths (got {list(widths)})")
        height, width = sides(image_size)
        stages, c_in = [], in_channels
        for i, c_out in enumerate(int(w) for w in widths):
            pool = min(height, width) >= 2
            if pool:
                height, width = height // 2, width // 2
            drop = DropBlock2d(**drop_block) if drop_block and i >= 2 else None
            stages.append(ResNet12Block(c_in, c_out, pool, drop))
            c_in = c_out
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, embedding_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


def resnet12(
    image_size: Size,
    embedding_dim: int,
    in_channels: int = 1,
    widths: Sequence[int] = WIDTHS,
    drop_block: dict | None = None,
) -> nn.Module:
    """model.encoder resnet12; model.encoder_args ``widths`` (4 stage widths, default
    64-160-320-640) and ``drop_block`` (``{drop_prob: 0.1, block_size: 5}``; default none)."""
    return ResNet12(image_size, embedding_dim, in_channels, widths, drop_block)
