"""Miner + loss forward and backward against pytorch-metric-learning on the same tensors.

Each (implementation, case, batch size) runs in its own process so peak memory (max RSS growth
over the process's baseline) is measured cleanly. Prints JSON with both times, their ratio
(ours / PML; goal <= 0.5) and both peak-memory figures."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CASES = {
    "contrastive/hard_pairs": ("contrastive", "hard_pairs"),
    "triplet/batch_hard": ("triplet", "batch_hard"),
    "triplet/batch_all": ("triplet", "batch_all"),
    "triplet/semi_hard": ("triplet", "semi_hard"),
    "multi_similarity": ("multi_similarity", "all_pairs"),
}
MARGIN = 0.2


def _ours(case: str):
    from siamese.losses.losses import MetricLoss

    loss, miner = CASES[case]
    crit = MetricLoss(loss, miner, MARGIN)
    return lambda e, y: crit(e, y)[0]


def _pml(case: str):
    from pytorch_metric_learning import distances, losses, miners, reducers

    lp = distances.LpDistance(normalize_embeddings=False)
    mean = reducers.MeanReducer()
    if case == "contrastive/hard_pairs":
        m = miners.PairMarginMiner(pos_margin=0.0, neg_margin=MARGIN, distance=lp)
        f = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=MARGIN, distance=lp, reducer=mean)
    elif case == "multi_similarity":
        f = losses.MultiSimilarityLoss(reducer=mean)
        return lambda e, y: f(e, y)
    else:
        kind = case.split("/")[1]
        if kind == "batch_hard":
            m = miners.BatchHardMiner(distance=lp)
        else:
            t = {"batch_all": "all", "semi_hard": "semihard"}[kind]
            m = miners.TripletMarginMiner(margin=MARGIN, type_of_triplets=t, distance=lp)
        f = losses.TripletMarginLoss(margin=MARGIN, distance=lp, reducer=mean)
    return lambda e, y: f(e, y, m(e, y))


def run_one(impl: str, case: str, batch: int, repeat: int) -> dict:
    import torch

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(batch, 128, generator=g), dim=1)
    labels = torch.arange(batch // 4).repeat_interleave(4)  # P x K with K = 4
    fn = _ours(case) if impl == "ours" else _pml(case)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(repeat + 1):
        e = emb.clone().requires_grad_(True)
        t = time.perf_counter()
        fn(e, labels).backward()
        if i:  # the first call warms up
            times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    return {"seconds": statistics.median(times), "peak_mib": round(peak / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--one", nargs=3, metavar=("IMPL", "CASE", "BATCH"))
    args = ap.parse_args()
    if args.one:
        impl, case, batch = args.one
        print(json.dumps(run_one(impl, case, int(batch), args.repeat)))
        return
    rows = []
    for case in CASES:
        for batch in args.batches:
            res = {}
            for impl in ("ours", "pml"):
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--one",
                        impl,
                        case,
                        str(batch),
                        "--repeat",
                        str(args.repeat),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                res[impl] = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(
                {
                    "case": case,
                    "batch": batch,
                    "ours_s": round(res["ours"]["seconds"], 5),
                    "pml_s": round(res["pml"]["seconds"], 5),
                    "time_ratio": round(res["ours"]["seconds"] / res["pml"]["seconds"], 3),
                    "ours_peak_mib": res["ours"]["peak_mib"],
                    "pml_peak_mib": res["pml"]["peak_mib"],
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(
        json.dumps(
            {
                "benchmark": "loss_speed",
                "embedding_dim": 128,
                "goal": "time_ratio <= 0.5",
                "results": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
