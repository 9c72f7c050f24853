"""Online miners over a batch's distance matrix. They return index tensors only, never
materialising (B, B, B) tensors, so memory stays O(B^2)."""

from __future__ import annotations

import torch


def label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def all_pairs(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple:
    """Every positive and negative pair of the batch (upper triangle)."""
    pos, neg = label_masks(labels)
    upper = torch.ones_like(pos).triu(1)
    return torch.nonzero(pos & upper, as_tuple=True), torch.nonzero(neg & upper, as_tuple=True)


def hard_pairs(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple:
    """All positive pairs plus the negatives still inside the margin (the only ones with a
    gradient under the contrastive loss); easy negatives would only dilute the mean."""
    pos, neg = label_masks(labels)
    upper = torch.ones_like(pos).triu(1)
    hard_neg = neg & upper & (dist.detach() < margin)
    return torch.nonzero(pos & upper, as_tuple=True), torch.nonzero(hard_neg, as_tuple=True)


def batch_hard(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple:
    """For each anchor with a positive: its farthest positive and nearest negative."""
    pos, neg = label_masks(labels)
    d = dist.detach()
    valid = pos.any(1) & neg.any(1)
    anchors = torch.nonzero(valid, as_tuple=True)[0]
    hardest_pos = d.masked_fill(~pos, float("-inf")).argmax(1)
    hardest_neg = d.masked_fill(~neg, float("inf")).argmin(1)
    return anchors, hardest_pos[anchors], hardest_neg[anchors]


_CHUNK_ELEMENTS = 1 << 22  # (anchor, positive) rows x batch columns per step: 16 MiB of float32


def _triplets_where(dist: torch.Tensor, labels: torch.Tensor, keep) -> tuple:
    """Every (a, p, n) whose gap ``d_an - d_ap`` satisfies ``keep``.

    Vectorised over (anchor, positive) pairs in chunks of rows x B, so peak memory stays
    O(B^2) (never the (B, B, B) tensor) while avoiding a Python loop per anchor."""
    pos, neg = label_masks(labels)
    d = dist.detach()
    a_all, p_all = torch.nonzero(pos, as_tuple=True)
    d_ap = d[a_all, p_all]
    chunk = max(1, _CHUNK_ELEMENTS // max(1, len(labels)))
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


def batch_all(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple:
    """Every (anchor, positive, negative) triplet with d_an - d_ap <= margin, as
    pytorch-metric-learning's TripletMarginMiner("all"): those that violate the margin, plus
    those exactly on it (zero loss, but counted in the mean)."""
    return _triplets_where(dist, labels, lambda gap: gap <= margin)


def semi_hard(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple:
    """FaceNet's semi-hard triplets: the negative is farther than the positive but still inside
    the margin (0 < d_an - d_ap <= margin)."""
    return _triplets_where(dist, labels, lambda gap: (gap > 0) & (gap <= margin))


PAIR_MINERS = {"all_pairs": all_pairs, "hard_pairs": hard_pairs}
TRIPLET_MINERS = {"batch_hard": batch_hard, "batch_all": batch_all, "semi_hard": semi_hard}
