"""Identity-disjoint splits: a test identity is never trained on, or verification scores would
measure memorisation instead of the learned metric."""

from __future__ import annotations

import numpy as np

from siamese.errors import DatasetError

SPLITS = ("train", "val", "test")
MIN_IDENTITIES = {"train": 2, "val": 2, "test": 2}


def split_identities(
    identities: list[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    where: str = "the dataset",
) -> dict[str, str]:
    """Map each identity to its split; seeded and independent of input order. ``where`` names
    the dataset in errors."""
    unique = sorted(set(identities))
    n = len(unique)
    needed = sum(MIN_IDENTITIES.values())
    if n < needed:
        shown = ", ".join(repr(u) for u in unique[:needed])
        raise DatasetError(
            f"too few identities for an identity-disjoint split of {where}: found {n} "
            f"({shown or 'none'}), need at least {needed} (2 each for train, val and test so "
            "every split has negative pairs); add identity folders to the dataset"
        )
    rng = np.random.default_rng(seed)
    order = [unique[i] for i in rng.permutation(n)]
    n_test = max(MIN_IDENTITIES["test"], round(n * test_fraction))
    n_val = max(MIN_IDENTITIES["val"], round(n * val_fraction))
    if n - n_test - n_val < MIN_IDENTITIES["train"]:
        raise DatasetError(
            f"{where}: {n} identities leave fewer than 2 for training after {n_val} for "
            f"validation and {n_test} for test; lower data.val_fraction / data.test_fraction or "
            "add identities"
        )
    assignment = {}
    for i, ident in enumerate(order):
        assignment[ident] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return assignment


def split_groups(
    group_of: dict[str, str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    where: str = "the dataset",
) -> dict[str, str]:
    """Map each identity to its split by holding out whole groups (e.g. Omniglot alphabets), so
    validation and test measure generalisation to unseen groups. Fractions count groups."""
    groups = sorted(set(group_of.values()))
    n = len(groups)
    if n < 3:
        raise DatasetError(
            f"splitting {where} by group needs at least 3 groups (train, val and test), found "
            f"{n}; set data.split_by: identity or add groups"
        )
    rng = np.random.default_rng(seed)
    order = [groups[i] for i in rng.permutation(n)]
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction))
    if n - n_test - n_val < 1:
        raise DatasetError(
            f"{n} groups leave none for training after {n_val} for validation and {n_test} for "
            "test; lower data.val_fraction / data.test_fraction or set data.split_by: identity"
        )
    split_of_group = {
        g: "test" if i < n_test else "val" if i < n_test + n_val else "train"
        for i, g in enumerate(order)
    }
    assignment = {ident: split_of_group[g] for ident, g in group_of.items()}
    for s in SPLITS:
        count = sum(v == s for v in assignment.values())
        if count < MIN_IDENTITIES[s]:
            raise DatasetError(
                f"the {s} split's groups hold {count} identit(ies); every split needs at least "
                f"{MIN_IDENTITIES[s]} (set data.split_by: identity or add groups)"
            )
    return assignment


def check_given_split(assignment: dict[str, str], where: str = "the dataset") -> dict[str, str]:
    """A split the data itself assigns (a manifest's split column), checked as the seeded split
    is: every split holds at least its minimum of identities (two, so it has negative pairs).
    The assignment maps each identity to one split, so it is identity-disjoint by construction
    (the manifest reader refuses an identity listed in two splits)."""
    for s in SPLITS:
        names = sorted(ident for ident, v in assignment.items() if v == s)
        if len(names) < MIN_IDENTITIES[s]:
            shown = ", ".join(repr(n) for n in names[:3]) or "none"
            raise DatasetError(
                f"{where}: the split column gives the {s} split {len(names)} identit(ies) "
                f"({shown}); every split needs at least {MIN_IDENTITIES[s]} (so it has negative "
                f"pairs): mark more identities {s}"
            )
    return dict(assignment)
