"""Fixed, seeded, balanced pair sets. Every model is scored on the same validation and test pairs,
so metrics of two runs are comparable."""

from __future__ import annotations

import numpy as np

from siamese.data.artifacts import PreparedData
from siamese.errors import DatasetError


def hard_negative_pairs(
    indices: np.ndarray, labels: np.ndarray, embeddings: np.ndarray, n_pairs: int, seed: int
) -> np.ndarray:
    """``n_pairs`` distinct different-identity pairs that a reference model finds closest.

    Anchors are drawn uniformly; each takes its nearest not-yet-used negative, so the set covers
    many anchors instead of piling onto one confusable identity. Memory is O(anchors x N)."""
    indices = np.asarray(indices)
    emb = np.asarray(embeddings, dtype=np.float64)  # rows aligned with ``indices``
    lab = labels[indices]
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int]] = []
    order = rng.permutation(len(indices))
    rounds = 0
    while len(out) < n_pairs and rounds < 50:
        rounds += 1
        for start in range(0, len(order), 256):
            rows = order[start : start + 256]
            d = ((emb[rows, None, :] - emb[None, :, :]) ** 2).sum(-1)
            d[lab[rows, None] == lab[None, :]] = np.inf
            for r, row in zip(rows, d, strict=True):
                for j in np.argsort(row)[: rounds + 1]:
                    if not np.isfinite(row[j]):
                        break
                    key = (int(min(indices[r], indices[j])), int(max(indices[r], indices[j])))
                    if key not in seen:
                        seen.add(key)
                        out.append(key)
                        break
                if len(out) == n_pairs:
                    break
            if len(out) == n_pairs:
                break
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def balanced_pairs(indices: np.ndarray, labels: np.ndarray, n_pairs: int, seed: int) -> dict:
    """Draw ``n_pairs`` unique pairs from ``indices``: half same identity, half different.

    Anchors are drawn uniformly over images, so identities are represented in proportion to their
    size, as they would be in production traffic.
    """
    indices = np.asarray(indices)
    lab = labels[indices]
    rng = np.random.default_rng(seed)
    by_label: dict[int, np.ndarray] = {int(c): indices[lab == c] for c in np.unique(lab)}
    with_pos = np.concatenate([v for v in by_label.values() if len(v) >= 2])
    if len(with_pos) == 0 or len(by_label) < 2:
        raise DatasetError("pair mining needs >= 2 identities, one of them with >= 2 images")
    n_pos = n_pairs // 2
    n_neg = n_pairs - n_pos
    max_pos = sum(len(v) * (len(v) - 1) // 2 for v in by_label.values())
    n_total = len(indices)
    max_neg = (n_total * n_total - sum(len(v) ** 2 for v in by_label.values())) // 2
    if n_pos > max_pos or n_neg > max_neg:
        raise DatasetError(
            f"cannot draw {n_pos} unique positive and {n_neg} negative pairs from "
            f"{n_total} images (at most {max_pos} positive and {max_neg} negative exist); "
            "lower the setting"
        )

    def draw(n: int, positive: bool) -> list[tuple[int, int]]:
        seen: set[tuple[int, int]] = set()
        out: list[tuple[int, int]] = []
        while len(out) < n:
            m = (n - len(out)) * 2 + 16
            anchors = rng.choice(with_pos if positive else indices, size=m)
            for a in anchors:
                la = int(labels[a])
                if positive:
                    pool = by_label[la]
                    b = pool[rng.integers(len(pool))]
                    if b == a:
                        continue
                else:
                    b = indices[rng.integers(n_total)]
                    if int(labels[b]) == la:
                        continue
                key = (int(min(a, b)), int(max(a, b)))
                if key in seen:
                    continue
                seen.add(key)
                out.append(key)
                if len(out) == n:
                    break
        return out

    pos = draw(n_pos, True)
    neg = draw(n_neg, False)
    pairs = np.array(pos + neg, dtype=np.int64).reshape(-1, 2)
    y = np.concatenate([np.ones(len(pos), np.int8), np.zeros(len(neg), np.int8)])
    order = rng.permutation(len(y))
    return {"a": pairs[order, 0], "b": pairs[order, 1], "y": y[order]}


# pair kinds saved with every pair set (``kind`` array)
RANDOM_NEGATIVE, SKILLED_FORGERY = 1, 2  # pairs' kind; 0: a positive (genuine) pair


def skilled_forgery_pairs(
    indices: np.ndarray,
    labels: np.ndarray,
    forged: np.ndarray,
    n_pairs: int,
    seed: int,
) -> np.ndarray:
    """Unique (genuine, forged) pairs of one writer drawn from ``indices``: the skilled-forgery
    negatives of signature verification. Column 0 is the genuine reference, column 1 the forgery."""
    indices = np.asarray(indices)
    lab, fg = labels[indices], forged[indices]
    blocks = []
    for c in np.unique(lab[fg]):
        genuine = indices[(lab == c) & ~fg]
        fakes = indices[(lab == c) & fg]
        if len(genuine) and len(fakes):
            g, f = np.meshgrid(genuine, fakes, indexing="ij")
            blocks.append(np.stack([g.ravel(), f.ravel()], axis=1))
    every = np.concatenate(blocks) if blocks else np.zeros((0, 2), np.int64)
    if n_pairs > len(every):
        raise DatasetError(
            f"cannot draw {n_pairs} skilled-forgery pairs: only {len(every)} (genuine, forged) "
            "pairs of one writer exist; lower mine.skilled_forgery_pairs"
        )
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(every), size=n_pairs, replace=False))
    return every[pick].astype(np.int64)


def with_hard_negatives(
    pairs: dict, data: PreparedData, reference: dict, fraction: float, seed: int
) -> dict:
    """Replace a fraction of the random negative pairs by the reference model's hardest ones
    (``reference``: the indices and embeddings of the training images under that model)."""
    neg = np.flatnonzero(pairs["y"] == 0)
    n_hard = int(round(len(neg) * fraction))
    hard = hard_negative_pairs(
        reference["indices"], data.labels, reference["embeddings"], n_hard, seed
    )
    reference["count"] = len(hard)
    replace = neg[: len(hard)]
    pairs = {k: v.copy() for k, v in pairs.items()}
    pairs["a"][replace], pairs["b"][replace] = hard[:, 0], hard[:, 1]
    return pairs


def with_skilled_forgeries(
    pairs: dict, data: PreparedData, split: str, wanted: int | None, seed: int
) -> tuple[dict, int]:
    """Add (genuine, forged) pairs of one writer as negatives of kind SKILLED_FORGERY, so
    evaluation can report the skilled-forgery error apart from the random-forgery one."""
    idx = data.indices(split)
    if not data.forged[idx].any() or wanted == 0:
        return pairs, 0
    if wanted is None:  # as many as the random negatives, at most every pair there is
        lab, fg = data.labels[idx], data.forged[idx]
        available = sum(
            int(((lab == c) & ~fg).sum()) * int(((lab == c) & fg).sum()) for c in np.unique(lab)
        )
        wanted = min(int((pairs["y"] == 0).sum()), available)
    extra = skilled_forgery_pairs(idx, data.labels, data.forged, wanted, seed)
    n = len(extra)
    merged = {
        "a": np.r_[pairs["a"], extra[:, 0]],
        "b": np.r_[pairs["b"], extra[:, 1]],
        "y": np.r_[pairs["y"], np.zeros(n, np.int8)].astype(np.int8),
        "kind": np.r_[pairs["kind"], np.full(n, SKILLED_FORGERY, np.int8)].astype(np.int8),
    }
    order = np.random.default_rng([seed, SKILLED_FORGERY]).permutation(len(merged["y"]))
    return {k: v[order] for k, v in merged.items()}, n
