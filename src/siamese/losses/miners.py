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


def batch_all(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple:
    """Every (anchor, positive, negative) triplet that violates the margin.

    Built per anchor row so peak memory is O(B^2) instead of O(B^3)."""
    pos, neg = label_masks(labels)
    d = dist.detach()
    out_a, out_p, out_n = [], [], []
    for a in torch.nonzero(pos.any(1) & neg.any(1), as_tuple=True)[0].tolist():
        p_idx = torch.nonzero(pos[a], as_tuple=True)[0]
        n_idx = torch.nonzero(neg[a], as_tuple=True)[0]
        viol = d[a, p_idx].unsqueeze(1) - d[a, n_idx].unsqueeze(0) + margin > 0
        pi, ni = torch.nonzero(viol, as_tuple=True)
        out_a.append(torch.full_like(pi, a))
        out_p.append(p_idx[pi])
        out_n.append(n_idx[ni])
    if not out_a:
        empty = torch.empty(0, dtype=torch.long, device=labels.device)
        return empty, empty, empty
    return torch.cat(out_a), torch.cat(out_p), torch.cat(out_n)


def semi_hard(dist: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple:
    """FaceNet's semi-hard triplets: the negative is farther than the positive but still inside
    the margin (0 < d_an - d_ap <= margin). Built per anchor row: O(B^2) memory."""
    pos, neg = label_masks(labels)
    d = dist.detach()
    out_a, out_p, out_n = [], [], []
    for a in torch.nonzero(pos.any(1) & neg.any(1), as_tuple=True)[0].tolist():
        p_idx = torch.nonzero(pos[a], as_tuple=True)[0]
        n_idx = torch.nonzero(neg[a], as_tuple=True)[0]
        gap = d[a, n_idx].unsqueeze(0) - d[a, p_idx].unsqueeze(1)
        pi, ni = torch.nonzero((gap > 0) & (gap <= margin), as_tuple=True)
        out_a.append(torch.full_like(pi, a))
        out_p.append(p_idx[pi])
        out_n.append(n_idx[ni])
    if not out_a:
        empty = torch.empty(0, dtype=torch.long, device=labels.device)
        return empty, empty, empty
    return torch.cat(out_a), torch.cat(out_p), torch.cat(out_n)


PAIR_MINERS = {"all_pairs": all_pairs, "hard_pairs": hard_pairs}
TRIPLET_MINERS = {"batch_hard": batch_hard, "batch_all": batch_all, "semi_hard": semi_hard}
