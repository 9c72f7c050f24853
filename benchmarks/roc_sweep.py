"""Our sort-and-sweep ROC against scikit-learn's ``roc_curve`` on the same arrays, in one run.

Prints JSON: seconds (best of ``--repeat``) and peak traced memory for each, and the ratios
ours / sklearn (goal: time ratio <= 1.0, memory linear in n)."""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc

import numpy as np
from sklearn.metrics import roc_curve as sk_roc_curve

from siamese.evaluation import metrics


def _measure(fn, repeat: int) -> tuple[float, int]:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return best, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10**6, 10**7])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        y = rng.integers(0, 2, n).astype(bool)
        d = np.round(rng.normal(size=n) + (~y) * 1.5, 4)  # realistic ties from float rounding
        ours_t, ours_m = _measure(lambda d=d, y=y: metrics.roc_curve(d, y), args.repeat)
        sk_t, sk_m = _measure(lambda d=d, y=y: sk_roc_curve(y, -d), args.repeat)
        full_t, full_m = _measure(
            lambda d=d, y=y: sk_roc_curve(y, -d, drop_intermediate=False), args.repeat
        )
        rows.append(
            {
                "n_pairs": n,
                "ours_s": round(ours_t, 4),
                "sklearn_s": round(sk_t, 4),
                "sklearn_full_curve_s": round(full_t, 4),
                "time_ratio": round(ours_t / sk_t, 3),
                "time_ratio_vs_full_curve": round(ours_t / full_t, 3),
                "ours_peak_bytes_per_pair": round(ours_m / n, 1),
                "sklearn_peak_bytes_per_pair": round(sk_m / n, 1),
                "memory_ratio": round(ours_m / sk_m, 3),
            }
        )
    print(
        json.dumps(
            {"benchmark": "roc_sweep", "goal": "time_ratio <= 1.0", "results": rows}, indent=2
        )
    )


if __name__ == "__main__":
    main()
