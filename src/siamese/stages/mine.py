"""mine: write the fixed validation/test pairs and, when configured, offline training pairs."""

from __future__ import annotations

from pathlib import Path

from siamese.config import Params
from siamese.io import atomic_dir, save_npz, write_json
from siamese.mining.offline import balanced_pairs
from siamese.stages.prepare import PreparedData

# distinct seed offsets so the three pair sets are independent draws of one seed
_SEED_OFFSETS = {"train": 0, "val": 1, "test": 2}


def run_mine(params: Params, prepared_dir: str | Path, out_dir: str | Path) -> dict:
    data = PreparedData(prepared_dir)
    counts = {"val": params.mine.val_pairs, "test": params.mine.test_pairs}
    if params.mine.train_pairs > 0:
        counts["train"] = params.mine.train_pairs
    summary: dict[str, int] = {}
    with atomic_dir(out_dir) as tmp:
        for split, n in counts.items():
            pairs = balanced_pairs(
                data.indices(split), data.labels, n, params.seed * 1000 + _SEED_OFFSETS[split]
            )
            save_npz(tmp / f"{split}.npz", **pairs)
            summary[f"{split}_pairs"] = int(len(pairs["y"]))
            summary[f"{split}_positive"] = int(pairs["y"].sum())
        write_json(tmp / "summary.json", summary)
    return summary
