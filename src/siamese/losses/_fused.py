"""The fused fast path of the losses: mining and reduction in one pass, gradient by hand.

Private to siamese.losses: each loss class picks one of these when it applies (euclidean and
squared euclidean distances, multi-similarity; float32/float64) and falls back to its reference
path (mined index tuples over an autograd distance matrix) otherwise. The tests hold the two
paths, and pytorch-metric-learning, to the same values, gradients and mined counts.

Every one of these losses is a sum over pairs of a function of the pair's distance, so
d loss / d embedding follows from the (B, B) matrix of d loss / d distance in one matrix product
(or, for batch-hard, from two gathered pairs per anchor): dense masked (B, B) reductions on a
matrix computed without autograd, no index tuples, no (B, B, B) tensor, no autograd graph over
B^2 entries. Selection uses the miners' own definitions (siamese.mining.online: the same-label
matrix, the chunk size).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from siamese.distances import squared_euclidean_matrix
from siamese.mining.online import rows_per_chunk, same_label

Stats = dict[str, int]
Grad = Callable[[torch.Tensor], torch.Tensor]
# compute(emb) -> (value, stats, grad), run without autograd; grad(g) = g * d value / d emb
Compute = Callable[[torch.Tensor], tuple[torch.Tensor, Stats, Grad]]

DTYPES = (torch.float32, torch.float64)  # what the hand-written gradients are checked in


class _HandGradient(torch.autograd.Function):
    """A scalar function of the embeddings whose gradient is written out by hand.

    ``compute(emb)`` runs without autograd and returns (value, stats, grad) where ``grad(g)``
    returns d value / d emb times the incoming gradient ``g``."""

    @staticmethod
    def forward(ctx, emb, compute, stats):
        value, found, ctx.grad = compute(emb.detach())
        stats.update(found)
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        return ctx.grad(g), None, None


def run(emb: torch.Tensor, compute: Compute) -> tuple[torch.Tensor, Stats]:
    """The loss value (differentiable in ``emb`` through the hand-written gradient) and the
    mined counts."""
    stats: Stats = {}
    return _HandGradient.apply(emb, compute, stats), stats


# Masks are kept as 0/1 tensors of the embeddings' dtype and applied by multiplication: on the
# CPU, comparisons into a bool tensor, torch.where and masked_fill cost several times a
# floating-point multiply, and a multiply by 0/1 is exact. Entries to exclude from a min are
# pushed out of reach by adding a large constant (exact for the entries that stay, which get 0).


def _far(dtype: torch.dtype) -> float:
    """Added to excluded entries: beyond any distance, yet finite after the arithmetic."""
    return torch.finfo(dtype).max / 16


def _dense_grad(
    e: torch.Tensor, dloss_ddist: torch.Tensor, dist: torch.Tensor, kind: str, symmetric: bool
) -> Grad:
    """Gradient of a loss given its (B, B) matrix dL/dD: with H_ij = dL/dD_ij dD_ij/de_i /
    (e_i - e_j) and S = H + H^T, d loss / d e = rowsum(S) e - S e (one matrix product)."""
    if kind == "euclidean":  # dD_ij/de_i = (e_i - e_j) / D_ij, taken as 0 at D_ij = 0
        h = dloss_ddist.div_(dist).nan_to_num_(0.0, 0.0, 0.0)
    else:  # squared euclidean: dD_ij/de_i = 2 (e_i - e_j)
        h = dloss_ddist.mul_(2.0)

    def grad(g: torch.Tensor) -> torch.Tensor:
        if symmetric:  # a loss over both orders of each pair: S = 2 H, and no transpose pass
            return torch.addmm(h.sum(1, keepdim=True) * e, h, e, alpha=-1).mul_(g * 2.0)
        s = h + h.T
        return torch.addmm(s.sum(1, keepdim=True) * e, s, e, alpha=-1).mul_(g)

    return grad


def _distances(e: torch.Tensor, kind: str) -> torch.Tensor:
    sq = squared_euclidean_matrix(e)
    return sq.sqrt_() if kind == "euclidean" else sq


def contrastive(
    labels: torch.Tensor, margin: float, kind: str, form: str, all_negatives: bool
) -> Compute:
    """Every positive pair plus the negatives inside the margin (hard_pairs) or all negatives
    (all_pairs), both orders of each pair, which leaves the two means unchanged."""

    def compute(e):
        d = _distances(e, kind)
        pos = same_label(labels, d.dtype)
        # max(0, m - d) on negative pairs, 0 on same-identity ones (pushed beyond the margin)
        hinge = torch.rsub(torch.add(d, pos, alpha=_far(d.dtype)), margin).clamp_min_(0.0)
        active = torch.sign(hinge)  # 1 where hinge > 0, i.e. on negatives with d < m
        hard = torch.rsub(pos, 1.0) if all_negatives else active
        pos.fill_diagonal_(0.0)
        n_pos, n_neg = pos.sum(), hard.sum()
        inv_pos, inv_neg = n_pos.clamp_min(1.0).reciprocal(), n_neg.clamp_min(1.0).reciprocal()
        if form == "linear":
            value = torch.dot(d.view(-1), pos.view(-1)) * inv_pos + hinge.sum() * inv_neg
            dl = torch.addcmul(active.mul_(-inv_neg), pos, inv_pos)
        else:
            dpos = d * pos
            pos_sum = torch.dot(dpos.view(-1), d.view(-1)) * inv_pos
            neg_sum = torch.dot(hinge.view(-1), hinge.view(-1)) * inv_neg
            value = (pos_sum + neg_sum) * 0.5
            dl = torch.addcmul(dpos.mul_(inv_pos), hinge, -inv_neg)
        stats = {"mined_pos": int(n_pos) // 2, "mined_neg": int(n_neg) // 2}
        # symmetric up to the rounding of D_ij against D_ji (the Gram matrix's two triangles)
        return value, stats, _dense_grad(e, dl, d, kind, symmetric=True)

    return compute


def batch_hard(labels: torch.Tensor, margin: float, kind: str, soft: bool) -> Compute:
    """Per anchor its farthest positive and nearest negative (the batch_hard miner), reduced
    as the mean hinge (or softplus) over the anchors that have both."""

    def compute(e):
        sq = squared_euclidean_matrix(e, diagonal=-1.0)  # self is never the hardest positive
        same = same_label(labels, sq.dtype)
        far = _far(sq.dtype)
        pos_sq, hp = torch.addcmul(same - 1.0, sq, same).max(1)  # -1 off the positives
        neg_sq, hn = torch.add(sq, same, alpha=far).min(1)  # far on the non-negatives
        valid = (pos_sq >= 0) & (neg_sq < far / 2)
        d = torch.stack([pos_sq, neg_sq]).clamp_min_(0.0)  # (d_ap, d_an) per anchor
        if kind == "euclidean":
            d.sqrt_()
        v = (d[0] - d[1]).add_(margin)
        valid = valid.to(v.dtype)
        n = valid.sum()
        w = valid.div_(n.clamp_min(1.0))  # 1/N on valid anchors, else 0
        if soft:
            value = torch.dot(torch.nn.functional.softplus(v), w)
            w = w.mul_(torch.sigmoid(v))
        else:
            value = torch.dot(v.clamp_min(0.0), w)
            w = w.mul_(v > 0)
        # d loss / d (e_a - e_other) = coef (e_a - e_other): +w/d_ap for the positive,
        # -w/d_an for the negative (d/de of a distance taken as 0 at distance 0)
        w = torch.stack([w, -w])
        coef = (w / d).nan_to_num_(0.0, 0.0, 0.0) if kind == "euclidean" else w.mul_(2.0)
        other = torch.cat([hp, hn])
        coef = coef.unsqueeze(2)

        def grad(g):
            diff = (e - e.index_select(0, other).view(2, len(e), -1)).mul_(coef * g)
            return diff.sum(0).index_add_(0, other, diff.view(len(other), -1), alpha=-1)

        return value, {"mined_triplets": int(n)}, grad

    return compute


def triplets(
    labels: torch.Tensor, margin: float, kind: str, soft: bool, semi_hard: bool
) -> Compute:
    """Batch-all (every triplet with d_an - d_ap <= margin) or semi-hard (0 < d_an - d_ap <=
    margin), as pytorch-metric-learning's TripletMarginMiner, reduced densely: per
    (anchor, positive) row over all batch columns, in chunks of rows."""

    def compute(e):
        d = _distances(e, kind)
        same = same_label(labels, d.dtype)
        d_neg = torch.add(d, same, alpha=_far(d.dtype))  # non-negatives never pass the test
        same.fill_diagonal_(0.0)
        a_all, p_all = same.nonzero(as_tuple=True)
        d_ap = d[a_all, p_all].unsqueeze(1)
        dl_neg = torch.zeros_like(d)  # N * d loss / d D_an, accumulated per anchor
        # per-step counts are exact in float32 (< 2^24); their sum is kept in float64
        dl_pos, total, count = [], d.new_zeros(()), torch.zeros((), dtype=torch.float64)
        chunk = rows_per_chunk(len(labels))
        for s in range(0, len(a_all), chunk):
            a = a_all[s : s + chunk]
            t = torch.sub(d_ap[s : s + chunk], d_neg.index_select(0, a))  # d_ap - d_an, as in PML
            keep = torch.ge(t, -margin, out=torch.empty_like(t))
            if semi_hard:
                keep.mul_(torch.lt(t, 0.0, out=torch.empty_like(t)))
            v = t.add_(margin)  # the triplet's violation d_ap - d_an + margin (>= 0 if kept)
            if soft:
                total += torch.dot(torch.nn.functional.softplus(v).view(-1), keep.view(-1))
                w = torch.sigmoid(v).mul_(keep)
            else:  # a violation of exactly 0 is counted but has no gradient
                total += torch.dot(v.view(-1), keep.view(-1))
                w = torch.sign(v).mul_(keep)
            count += keep.sum()
            dl_pos.append(w.sum(1))
            dl_neg.index_add_(0, a, w)
        inv = count.clamp_min(1.0).reciprocal().to(d.dtype)
        dl = dl_neg.mul_(-inv)
        if dl_pos:
            dl.index_put_((a_all, p_all), torch.cat(dl_pos).mul_(inv))
        return total * inv, {"mined_triplets": int(count)}, _dense_grad(e, dl, d, kind, False)

    return compute


def multi_similarity(labels: torch.Tensor, alpha: float, beta: float, base: float) -> Compute:
    """Wang et al. 2019 over every pair, with plain sums of exponentials (see exp_is_safe)."""

    def compute(e):
        norm = torch.linalg.vector_norm(e, dim=1, keepdim=True)
        x = e / norm.clamp_min(1e-12)  # torch.nn.functional.normalize
        same = same_label(labels, e.dtype)
        neg = torch.rsub(same, 1.0)
        # exponent -alpha (s - base) on same-identity pairs, beta (s - base) on the others
        expo = (x @ x.T).sub_(base).mul_(same.mul(-(alpha + beta)).add_(beta)).exp_()
        same.fill_diagonal_(0.0)
        ep, en = expo.mul(same), expo.mul_(neg)
        sp, sn = ep.sum(1, keepdim=True), en.sum(1, keepdim=True)
        value = (sp.log1p() / alpha + sn.log1p() / beta).mean()
        dl_dsim = en.div_(sn.add_(1.0)).sub_(ep.div_(sp.add_(1.0))).mul_(1.0 / len(labels))

        def grad(g):
            gx = (dl_dsim + dl_dsim.T) @ x
            gx = gx - x * (x * gx).sum(1, keepdim=True) * (norm > 1e-12)
            return gx.div_(norm.clamp_min(1e-12)).mul_(g)

        return value, {}, grad

    return compute


def exp_is_safe(alpha: float, beta: float, base: float, dtype: torch.dtype, batch: int) -> bool:
    """Cosine similarities lie in [-1, 1], so the largest exponent is bounded: when the sums of
    exponentials cannot overflow, they need no max-subtraction (log-sum-exp) pass."""
    bound = max(alpha * (1 + base), -alpha * (1 - base), beta * (1 - base), -beta * (1 + base))
    return bound + math.log(max(batch, 1)) < 0.9 * math.log(torch.finfo(dtype).max)
