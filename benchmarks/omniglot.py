"""Omniglot one-shot benchmark: train on background alphabets through ``siamese run --preset
omniglot``, then report 20-way within-alphabet one-shot accuracy on background alphabets held
out of training (the evaluate stage's episodes), and the same protocol in the official Lake et
al. run format (``siamese oneshot`` on runs built from the held-out alphabets). Prints JSON;
everything is also in the project's MLflow experiment ``benchmark-omniglot``.

    python benchmarks/omniglot.py [--data ZIP] [--loss contrastive|triplet|...] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _pipeline import SHARED_DATA, emit, main_metrics, run_preset, siamese

MINERS = {
    "contrastive": "hard_pairs",
    "triplet": "semi_hard",
    "multi_similarity": "all_pairs",
    "bce": "all_pairs",
}


def held_out_alphabets(identities: dict) -> list[str]:
    """The test split's alphabets (identities are named Alphabet/characterNN)."""
    return sorted({name.split("/")[0] for name, s in identities["split"].items() if s == "test"})


def bench(workdir: Path, data: Path, loss: str, extra: list[str]) -> dict:
    sets = [
        f"data.source={data}",
        f"train.loss={loss}",
        f"train.miner={MINERS[loss]}",
        "register.experiment=benchmark-omniglot",
        f"register.model_name=omniglot-{loss}",
        *extra,
    ]
    if loss == "triplet":
        sets.append("train.margin=0.2")
    r = run_preset(workdir, "omniglot", sets)
    runs_dir = workdir / "runs"
    alphabets = held_out_alphabets(r["identities"])
    siamese(
        r["project"],
        "oneshot-runs",
        "--source",
        str(data),
        "--dest",
        str(runs_dir),
        "--alphabets",
        ",".join(alphabets),
        "--runs",
        "20",
    )
    out = workdir / "oneshot.json"
    siamese(
        r["project"],
        "oneshot",
        "--runs",
        str(runs_dir),
        "--model",
        f"models:/omniglot-{loss}@champion",
        "--out",
        str(out),
    )
    lake = json.loads(out.read_text())
    m = r["metrics"]
    return {
        "loss": loss,
        "oneshot_20way_within_alphabet": m["oneshot"].get("20way_1shot_within_group"),
        "oneshot_20way_lake_runs": {k: lake[k] for k in ("accuracy", "items", "runs")},
        "oneshot": m["oneshot"],
        "retrieval": m.get("retrieval"),
        "verification": main_metrics(m),
        "held_out_alphabets": alphabets,
        "train": r["train"],
        "pipeline_s": r["pipeline_s"],
        "settings": sets,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=SHARED_DATA / "omniglot/images_background.zip")
    ap.add_argument("--loss", action="append", choices=sorted(MINERS), default=None)
    ap.add_argument("--set", action="append", default=[], help="extra params override")
    ap.add_argument("--keep", type=Path, default=None, help="keep the project copies here")
    args = ap.parse_args()
    losses = args.loss or ["contrastive"]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        for loss in losses:
            results.append(bench(base / loss, args.data.resolve(), loss, args.set))
    emit(
        {
            "benchmark": "omniglot_oneshot",
            "protocol": "20-way 1-shot within alphabet, background alphabets held out of training",
            "reference": {"koch_2015_siamese": 0.92, "humans_lake_2015": 0.955},
            "goal": {"accuracy": 0.955, "training_minutes": 30},
            "results": results,
        }
    )


if __name__ == "__main__":
    main()
