"""DropBlock (Ghiasi et al. 2018): dropout of contiguous square regions of a feature map, the
regulariser of the few-shot ResNet-12 (Lee et al. 2019, MetaOptNet). torchvision has one
(``torchvision.ops.DropBlock2d``) but cannot be imported with the pinned CPU torch, so it is
written here in plain torch."""

from __future__ import annotations

import torch
from torch import nn


class DropBlock2d(nn.Module):
    """Zero ``block_size`` x ``block_size`` blocks so that about ``drop_prob`` of the activations
    are dropped, and rescale the rest; the identity in eval mode or with ``drop_prob`` 0."""

    def __init__(self, drop_prob: float = 0.1, block_size: int = 5):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must lie in [0, 1) (got {drop_prob})")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1 (got {block_size})")
        self.drop_prob, self.block_size = float(drop_prob), int(block_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        _, _, height, width = x.shape
        size = min(self.block_size, height, width)
        # the seed rate that drops drop_prob of the map: seeds only where a whole block fits
        valid = (height - size + 1) * (width - size + 1)
        gamma = self.drop_prob * height * width / (size * size * valid)
        seeds = (
            torch.rand(
                (x.shape[0], x.shape[1], height - size + 1, width - size + 1), device=x.device
            )
            < gamma
        )
        pad = size - 1
        seeds = nn.functional.pad(seeds.to(x.dtype), (pad, pad, pad, pad))
        dropped = nn.functional.max_pool2d(seeds, size, stride=1)
        keep = 1.0 - dropped
        return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}"
