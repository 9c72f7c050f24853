"""Online miners over a batch's distance matrix, and the label masks and chunk size they share
with the losses' fused path (siamese.losses._fused), so both select from one definition.

The miners return index tensors only, never materialising (B, B, B) tensors, so memory stays
O(B^2). A pair miner returns ``((pos_i, pos_j), (neg_i, neg_j))``, a triplet miner
``(anchors, positives, negatives)``; the losses consume these tuples."""

from __future__ import annotations

from collections.abc import Callable

import torch

# (anchor, positive) rows x batch columns per step of the batch-all / semi-hard selection (here
# and in the fused reductions): bounds the working set (16 MiB per float32 temporary) whatever the
# batch size, in few steps. Read at call time, so a test can shrink it.
CHUNK_ELEMENTS = 1 << 22

PairIndices = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
TripletIndices = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def rows_per_chunk(batch: int) -> int:
    """(anchor, positive) rows per step so that rows x ``batch`` stays within CHUNK_ELEMENTS."""
    return max(1, CHUNK_ELEMENTS // max(1, batch))


def same_label(labels: torch.Tensor, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """(B, B) same-identity matrix, diagonal included, compared exactly in the labels' own dtype
    and written straight into ``dtype`` (bool for masks, 0/1 floats for the fused path)."""
    out = torch.empty(len(labels), len(labels), dtype=dtype, device=labels.device)
    return torch.eq(labels.unsqueeze(1), labels.unsqueeze(0), out=out)


def label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positives, negatives): bool (B, B) masks of same-identity pairs (without the diagonal)
    and of different-identity pairs."""
    same = same_label(labels)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def every_pair(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(i, j, same)``: every pair of the batch once (i < j, row-major) and whether it is a
    same-identity pair. The all_pairs selection in one list, for a loss that scores both classes
    in one pass (the learned head's BCE)."""
    n = len(labels)
    i, j = torch.triu_indices(n, n, 1, device=labels.device)
    return i, j, labels[i] == labels[j]


def all_pairs(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> PairIndices:
    """Every positive and negative pair of the batch (upper triangle, row-major)."""
    i, j, same = every_pair(labels)
    diff = ~same
    return (i[same], j[same]), (i[diff], j[diff])


def hard_pairs(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> PairIndices:
    """All positive pairs plus the negatives still inside the margin (the only ones with a
    gradient under the contrastive loss); easy negatives would only dilute the mean."""
    pos, (ni, nj) = all_pairs(dist, labels, margin)
    hard = dist.detach()[ni, nj] < margin
    return pos, (ni[hard], nj[hard])


def batch_hard(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> TripletIndices:
    """For each anchor with a positive: its farthest positive and nearest negative."""
    pos, neg = label_masks(labels)
    d = dist.detach()
    valid = pos.any(1) & neg.any(1)
    anchors = torch.nonzero(valid, as_tuple=True)[0]
    hardest_pos = d.masked_fill(~pos, float("-inf")).argmax(1)
    hardest_neg = d.masked_fill(~neg, float("inf")).argmin(1)
    return anchors, hardest_pos[anchors], hardest_neg[anchors]


def _triplets_where(
    dist: torch.Tensor, labels: torch.Tensor, keep: Callable[[torch.Tensor], torch.Tensor]
) -> TripletIndices:
    """Every (a, p, n) whose gap ``d_an - d_ap`` satisfies ``keep``.

    Vectorised over (anchor, positive) pairs in chunks of rows x B, so peak memory stays
    O(B^2) (never the (B, B, B) tensor) while avoiding a Python loop per anchor."""
    pos, neg = label_masks(labels)
    d = dist.detach()
    a_all, p_all = torch.nonzero(pos, as_tuple=True)
    d_ap = d[a_all, p_all]
    chunk = rows_per_chunk(len(labels))
    out_a, out_p, out_n = [], [], []
    for s in range(0, len(a_all), chunk):
        a, p = a_all[s : s + chunk], p_all[s : s + chunk]
        gap = d[a] - d_ap[s : s + chunk].unsqueeze(1)
        rows, n = torch.nonzero(neg[a] & keep(gap), as_tuple=True)
        out_a.append(a[rows])
        out_p.append(p[rows])
        out_n.append(n)
    if not out_a:
        empty = torch.empty(0, dtype=torch.long, device=labels.device)
        return empty, empty, empty
    return torch.cat(out_a), torch.cat(out_p), torch.cat(out_n)


def batch_all(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> TripletIndices:
    """Every (anchor, positive, negative) triplet with d_an - d_ap <= margin, as
    pytorch-metric-learning's TripletMarginMiner("all"): those that violate the margin, plus
    those exactly on it (zero loss, but counted in the mean)."""
    return _triplets_where(dist, labels, lambda gap: gap <= margin)


def semi_hard(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> TripletIndices:
    """FaceNet's semi-hard triplets: the negative is farther than the positive but still inside
    the margin (0 < d_an - d_ap <= margin)."""
    return _triplets_where(dist, labels, lambda gap: (gap > 0) & (gap <= margin))
