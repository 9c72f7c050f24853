"""Miner + loss forward and backward against pytorch-metric-learning (PML) on the same tensors.

Timing: for each (case, batch size) one process builds both implementations on the same
embeddings and labels, warms both up, then alternates them call by call (ABBA order, so neither
always runs first or on a cache the other just filled) and keeps the median of each. Under a
shared, noisy CPU both see the same machine state; the ratio is the figure to read. Repeats run
until a time budget is spent (at least ``--min-repeat``, at most ``--repeat``), since PML's
batch-all at B = 1024 takes seconds per call.

Peak memory: each (implementation, case, batch size) runs again alone in a fresh process: the
growth of max RSS over the process's baseline after a warm-up call and two measured calls.

Prints JSON with both times, their ratio (ours / PML; goal <= 0.5) and both peak-memory figures.
"""

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
    from siamese.losses import ContrastiveLoss, MultiSimilarityLoss, TripletLoss

    loss, miner = CASES[case]
    if loss == "contrastive":
        # PML's ContrastiveLoss is the linear form: d for positives, max(0, m - d) for negatives
        crit = ContrastiveLoss(miner, MARGIN, contrastive_form="linear")
    elif loss == "triplet":
        crit = TripletLoss(miner, MARGIN)
    else:
        crit = MultiSimilarityLoss()  # PML's defaults: alpha 2, beta 50, base 0.5
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


def _inputs(batch: int):
    import torch

    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(batch, 128, generator=g), dim=1)
    labels = torch.arange(batch // 4).repeat_interleave(4)  # P x K with K = 4
    return emb, labels


def _call(fn, emb, labels) -> float:
    e = emb.clone().requires_grad_(True)
    t = time.perf_counter()
    fn(e, labels).backward()
    return time.perf_counter() - t


def time_pair(case: str, batch: int, threads: int, budget_s: float, lo: int, hi: int) -> dict:
    """Both implementations in one process, interleaved; median seconds per call."""
    import torch

    torch.set_num_threads(threads)
    emb, labels = _inputs(batch)
    fns = {"ours": _ours(case), "pml": _pml(case)}
    for _ in range(3):  # warm-up: first-call allocations, thread pools, caches
        for fn in fns.values():
            _call(fn, emb, labels)
    times: dict[str, list[float]] = {k: [] for k in fns}
    start, repeat = time.perf_counter(), 0
    while repeat < lo or (repeat < hi and time.perf_counter() - start < budget_s):
        order = ("ours", "pml") if repeat % 2 == 0 else ("pml", "ours")
        for k in order:
            times[k].append(_call(fns[k], emb, labels))
        repeat += 1
    return {
        "ours_s": statistics.median(times["ours"]),
        "pml_s": statistics.median(times["pml"]),
        "ours_min_s": min(times["ours"]),
        "pml_min_s": min(times["pml"]),
        "repeats": repeat,
    }


def peak_memory(impl: str, case: str, batch: int, threads: int) -> dict:
    """Max-RSS growth of one implementation alone in this (fresh) process."""
    import torch

    torch.set_num_threads(threads)
    emb, labels = _inputs(batch)
    fn = _ours(case) if impl == "ours" else _pml(case)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(3):
        _call(fn, emb, labels)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    return {"peak_mib": round(peak / 1024, 1)}


def _child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=8.0, help="seconds of timing per row")
    ap.add_argument("--min-repeat", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=200, help="most repeats per row")
    ap.add_argument("--time-pair", nargs=2, metavar=("CASE", "BATCH"))
    ap.add_argument("--memory", nargs=3, metavar=("IMPL", "CASE", "BATCH"))
    args = ap.parse_args()
    if args.time_pair:
        case, batch = args.time_pair
        res = time_pair(case, int(batch), args.threads, args.budget, args.min_repeat, args.repeat)
        print(json.dumps(res))
        return
    if args.memory:
        impl, case, batch = args.memory
        print(json.dumps(peak_memory(impl, case, int(batch), args.threads)))
        return
    common = ["--threads", str(args.threads)]
    timing = [
        "--budget", str(args.budget), "--min-repeat", str(args.min_repeat),
        "--repeat", str(args.repeat),
    ]  # fmt: skip
    rows = []
    for case in args.cases:
        for batch in args.batches:
            t = _child("--time-pair", case, str(batch), *common, *timing)
            mem = {
                impl: _child("--memory", impl, case, str(batch), *common)["peak_mib"]
                for impl in ("ours", "pml")
            }
            rows.append(
                {
                    "case": case,
                    "batch": batch,
                    "ours_s": round(t["ours_s"], 6),
                    "pml_s": round(t["pml_s"], 6),
                    "time_ratio": round(t["ours_s"] / t["pml_s"], 3),
                    # contention only ever adds time: the fastest call is the least disturbed
                    "min_ratio": round(t["ours_min_s"] / t["pml_min_s"], 3),
                    "repeats": t["repeats"],
                    "ours_peak_mib": mem["ours"],
                    "pml_peak_mib": mem["pml"],
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(
        json.dumps(
            {
                "benchmark": "loss_speed",
                "embedding_dim": 128,
                "threads": args.threads,
                "timing": "median of interleaved calls (ABBA), both in one process",
                "goal": "time_ratio <= 0.5",
                "worst_ratio": max(r["time_ratio"] for r in rows),
                "worst_min_ratio": max(r["min_ratio"] for r in rows),
                "results": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
