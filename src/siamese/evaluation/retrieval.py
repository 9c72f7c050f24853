"""Leave-one-out retrieval metrics (Musgrave, Belongie & Lim 2020, "A Metric Learning Reality
Check"): every image queries all *other* images, ranked by distance under the model.

- precision@1: the share of queries whose nearest other image has the query's label;
- R-precision: with R the number of other images of the query's label, the share of the
  R nearest that have it;
- MAP@R: ``(1/R) * sum_{i<=R} P(i) * rel(i)``, the mean average precision over the first R ranks.

Queries whose label has no other image (R = 0) are left out of all three, as in
pytorch-metric-learning's AccuracyCalculator. Tied distances rank in index order (a stable sort);
ties between images of the same relevance do not change any metric.
"""

from __future__ import annotations

import numpy as np

from siamese.evaluation.oneshot import support_distances

# distances held per chunk of queries (queries x gallery): bounds memory whatever the test size
_CHUNK_CELLS = 1 << 22


def retrieval_metrics(
    encoder, embeddings: np.ndarray, labels: np.ndarray, chunk: int | None = None
) -> dict:
    """precision_at_1, r_precision and map_at_r of leave-one-out retrieval, plus the query count.

    ``encoder`` is what :func:`siamese.evaluation.oneshot.support_distances` takes (the model,
    or a distance
    name for raw embeddings)."""

    labels = np.asarray(labels)
    emb = np.asarray(embeddings)
    n = len(labels)
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    r_all = counts[inv] - 1
    if chunk is None:  # ~4M distances (32 MB) a chunk, not a number of rows growing with n
        chunk = max(1, min(1024, _CHUNK_CELLS // max(n, 1)))
    p1, rp, mapr = [], [], []
    for start in range(0, n, chunk):
        q = np.arange(start, min(start + chunk, n))
        q = q[r_all[q] > 0]
        if len(q) == 0:
            continue
        d = support_distances(encoder, emb[q], emb)
        d[np.arange(len(q)), q] = np.inf  # leave the query itself out
        r = r_all[q]
        top = int(r.max())
        order = np.argsort(d, axis=1, kind="stable")[:, :top]
        rel = labels[order] == labels[q][:, None]
        within = np.arange(1, top + 1)[None, :] <= r[:, None]
        rel &= within
        p1.append(rel[:, 0])
        rp.append(rel.sum(1) / r)
        precision_at_i = np.cumsum(rel, axis=1) / np.arange(1, top + 1)
        mapr.append((precision_at_i * rel).sum(1) / r)
    if not p1:
        return {"queries": 0, "skipped": "no label has two or more images"}
    return {
        "precision_at_1": float(np.concatenate(p1).mean()),
        "r_precision": float(np.concatenate(rp).mean()),
        "map_at_r": float(np.concatenate(mapr).mean()),
        "queries": int(sum(len(x) for x in p1)),
    }
