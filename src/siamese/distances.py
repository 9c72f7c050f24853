"""Distances between embeddings. Every consumer (losses, miners, validation, calibration,
serving) asks this module, so a model is trained and served on one and the same distance."""

from __future__ import annotations

import torch

# train.distance: the config's allowed values (a learned head reports its own, see models)
DISTANCES = ("euclidean", "squared_euclidean", "cosine")


def _squared_euclidean(x: torch.Tensor, y: torch.Tensor, same: bool) -> torch.Tensor:
    sq = (x * x).sum(1, keepdim=True) + (y * y).sum(1).unsqueeze(0) - 2.0 * x @ y.T
    sq = sq.clamp_min(0.0)
    if same:  # self-distances are exactly zero, whatever the rounding of the expansion
        sq = sq.masked_fill(torch.eye(len(x), dtype=torch.bool, device=x.device), 0.0)
    return sq


def squared_euclidean_matrix(x: torch.Tensor, diagonal: float = 0.0) -> torch.Tensor:
    """(B, B) squared euclidean distances for code that runs without autograd (mining, losses
    with hand-written gradients). The squared norms are the Gram matrix's diagonal, so the
    self-distances n_i + n_i - 2 G_ii come out exactly 0 (or are set to ``diagonal``)."""
    gram = x @ x.T
    n = gram.diagonal()
    sq = torch.add(n.unsqueeze(1), n).sub_(gram, alpha=2.0).clamp_min_(0.0)
    return sq.fill_diagonal_(diagonal) if diagonal != 0.0 else sq


def pairwise_distance(
    x: torch.Tensor, y: torch.Tensor | None = None, kind: str = "euclidean"
) -> torch.Tensor:
    """(len(x), len(y)) distance matrix; gradients stay finite at zero distance."""
    same = y is None
    y = x if y is None else y
    if kind == "cosine":
        xn = torch.nn.functional.normalize(x, dim=1)
        yn = torch.nn.functional.normalize(y, dim=1)
        dist = (1.0 - xn @ yn.T).clamp_min(0.0)
        if same:
            dist = dist.masked_fill(torch.eye(len(x), dtype=torch.bool, device=x.device), 0.0)
        return dist
    sq = _squared_euclidean(x, y, same)
    if kind == "squared_euclidean":
        return sq
    if kind != "euclidean":
        raise ValueError(f"unknown distance {kind!r}; allowed: {', '.join(DISTANCES)}")
    zero = sq <= 1e-12
    return torch.sqrt(sq.masked_fill(zero, 1.0)).masked_fill(zero, 0.0)


def pairwise_euclidean(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    return pairwise_distance(x, y, "euclidean")


def pair_distance(a: torch.Tensor, b: torch.Tensor, kind: str = "euclidean") -> torch.Tensor:
    """Row-wise distance between two embedding batches."""
    if kind == "cosine":
        return 1.0 - torch.nn.functional.cosine_similarity(a, b, dim=1)
    sq = (a - b).pow(2).sum(1)
    if kind == "squared_euclidean":
        return sq
    if kind != "euclidean":
        raise ValueError(f"unknown distance {kind!r}; allowed: {', '.join(DISTANCES)}")
    return torch.linalg.vector_norm(a - b, dim=1)
