"""The Siamese twin: one encoder network shared by both branches, its output normalisation and
the one place that turns two embeddings into a distance."""

from __future__ import annotations

import torch
from torch import nn

from siamese.data.images import ImageSpec
from siamese.distances import pair_distance, pairwise_distance
from siamese.models.encoders.registry import build_encoder
from siamese.models.encoders.shapes import Size
from siamese.models.heads import build_head, head_distance

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
        encoder_args: dict | None = None,
    ):
        super().__init__()
        # the images it takes, stored with it (model.json, the package) so every consumer
        # decodes and resizes exactly as training did; validated here
        image = ImageSpec.of(image_size, in_channels, resize)
        self.config = {
            "encoder": encoder,
            # the encoder's own arguments (model.encoder_args): with the name, the whole spec
            # serving rebuilds the network from
            "encoder_args": dict(encoder_args or {}),
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
            encoder,
            (image.height, image.width),
            embedding_dim,
            channels,
            image.channels,
            encoder_args,
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
