"""A small fully connected encoder: a cheap baseline and a fast test double of real size."""

from __future__ import annotations

from torch import nn

from siamese.models.encoders.shapes import Size, sides


class MLP(nn.Sequential):
    """flatten -> Linear -> ReLU -> Linear. A Sequential, so its weights keep the names models
    trained before this class existed were saved with (``0.weight`` ... ``3.bias``)."""

    @property
    def head(self) -> nn.Module:
        """The projection to the embedding (what train.freeze_backbone_epochs still trains)."""
        return self[-1]


def mlp(
    image_size: Size, embedding_dim: int, channels: int = 64, in_channels: int = 1
) -> nn.Module:
    """model.encoder mlp; its hidden layer has 4 x model.channels units."""
    hidden = channels * 4
    height, width = sides(image_size)
    return MLP(
        nn.Flatten(),
        nn.Linear(in_channels * height * width, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, embedding_dim),
    )
