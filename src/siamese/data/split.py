"""Identity-disjoint splits: a test identity is never trained on, or verification scores would
measure memorisation instead of the learned metric."""

from __future__ import annotations

import numpy as np

from siamese.data.sources import DatasetError

SPLITS = ("train", "val", "test")
MIN_IDENTITIES = {"train": 2, "val": 2, "test": 2}


def split_identities(
    identities: list[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """Map each identity to its split; seeded and independent of input order."""
    unique = sorted(set(identities))
    n = len(unique)
    needed = sum(MIN_IDENTITIES.values())
    if n < needed:
        raise DatasetError(
            f"too few identities for an identity-disjoint split: found {n}, need at least "
            f"{needed} (2 each for train, val and test so every split has negative pairs)"
        )
    rng = np.random.default_rng(seed)
    order = [unique[i] for i in rng.permutation(n)]
    n_test = max(MIN_IDENTITIES["test"], round(n * test_fraction))
    n_val = max(MIN_IDENTITIES["val"], round(n * val_fraction))
    if n - n_test - n_val < MIN_IDENTITIES["train"]:
        raise DatasetError(
            f"{n} identities leave fewer than 2 for training after {n_val} for validation and "
            f"{n_test} for test; lower data.val_fraction / data.test_fraction or add identities"
        )
    assignment = {}
    for i, ident in enumerate(order):
        assignment[ident] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return assignment
