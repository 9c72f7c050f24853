"""The served model under load: ``mlflow models serve --workers 2`` driven by N concurrent
clients for T seconds (a bounded thread pool on loopback, at most --max-requests requests), a
shuffled mix of good requests (1 to 4 pairs) and bad ones (not an image, invalid JSON, a missing
column, an unknown mode, no Content-Type, too many rows, a body over the size limit).

Reports throughput, p50/p99 latency (good and bad apart), the status of every answer (goal:
no 5xx, every good request 200, every bad one its 4xx) and the RSS of the server's whole process
tree (the CLI, uvicorn's supervisor and workers; psutil) before and after the run (goal:
growth under 10%; the baseline is taken after a warm-up of the same load, so it counts what
the run adds, not the workers' first requests). The package is the real one
(siamese.registry.package.save_package) around a freshly initialised conv4 encoder: load does
not depend on what the weights learned. Inputs are AT&T faces when the shared data is there,
else random images. Prints JSON."""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
from _common import background, free_port, tool_env, wait_http
from serving_latency import _images, _stats

MAX_ROWS = 64  # serve.max_rows of the package: 65 rows are answered 413 before decoding
MAX_REQUEST_BYTES = 1_000_000  # serve.max_request_bytes: a bigger body is answered 413
JSON = {"Content-Type": "application/json"}


def _requests(imgs: list[bytes], rng: random.Random) -> list[tuple[str, bytes, dict, set[int]]]:
    """The request kinds: (kind, body, headers, the statuses that answer it correctly)."""
    from siamese.registry.client import b64, dataframe_split_json

    def pairs(n: int) -> bytes:
        picks = [(rng.randrange(len(imgs)), rng.randrange(len(imgs))) for _ in range(n)]
        frame = pd.DataFrame(
            {"image_a": [imgs[a] for a, _ in picks], "image_b": [imgs[b] for _, b in picks]}
        )
        return dataframe_split_json(frame).encode()

    def split(columns: list[str], rows: list[list], params: dict | None = None) -> bytes:
        body: dict = {"dataframe_split": {"columns": columns, "data": rows}}
        if params:
            body["params"] = params
        return json.dumps(body).encode()

    good = [(f"good_{n}_pairs", pairs(n), JSON, {200}) for n in (1, 2, 4)]
    face = b64(imgs[0])
    bad = [
        ("bad_not_an_image", split(["image_a", "image_b"], [[face, b64(b"not an image")]]), JSON),
        ("bad_invalid_json", b'{"dataframe_split": {"columns": [', JSON),
        ("bad_missing_column", split(["image_a"], [[face]]), JSON),
        ("bad_unknown_mode", split(["image_a", "image_b"], [[face, face]], {"mode": "x"}), JSON),
        ("bad_no_content_type", pairs(1), {}),
        ("bad_too_many_rows", split(["image_a", "image_b"], [["x", "x"]] * (MAX_ROWS + 1)), JSON),
        ("bad_body_too_large", b" " * (MAX_REQUEST_BYTES + 1), JSON),
    ]
    expected = {
        "bad_no_content_type": {415},
        "bad_too_many_rows": {413},
        "bad_body_too_large": {413},
    }
    return good + [(k, b, h, expected.get(k, {400})) for k, b, h in bad]


def _tree_rss(proc) -> int:
    """RSS bytes of a process and all its descendants (the CLI runs uvicorn and its workers)."""
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # a child that just exited
            pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (threads)")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long the clients send")
    ap.add_argument("--max-requests", type=int, default=20_000, help="bound on requests sent")
    ap.add_argument("--workers", type=int, default=2, help="mlflow models serve --workers")
    ap.add_argument("--bad-fraction", type=float, default=0.3, help="share of bad requests")
    ap.add_argument("--image-size", type=int, default=105)
    ap.add_argument("--channels", type=int, default=32, help="conv4 width (params.yaml default)")
    ap.add_argument("--embedding-dim", type=int, default=64)
    ap.add_argument(
        "--warmup-seconds", type=float, default=5.0, help="the same load, before the baseline"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import psutil
    import requests
    import torch

    from siamese.models.encoders import SiameseEncoder
    from siamese.registry.package import save_package

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(args.seed)
        enc = SiameseEncoder("conv4", args.image_size, args.embedding_dim, args.channels, True)
        (tmp / "train").mkdir()
        torch.save(enc.state_dict(), tmp / "train" / "model.pt")
        (tmp / "train" / "model.json").write_text(json.dumps(enc.config))
        calibration = {"strategy": "eer", "threshold": 0.8, "probability": {"method": "none"}}
        pkg = save_package(
            tmp / "pkg",
            tmp / "train",
            calibration,
            25_000_000,
            max_request_bytes=MAX_REQUEST_BYTES,
            max_rows=MAX_ROWS,
        )
        kinds = _requests(_images(64, args.image_size), rng)
        good = [k for k in kinds if k[0].startswith("good")]
        bad = [k for k in kinds if k[0].startswith("bad")]

        port, log = free_port(), tmp / "serve.log"
        mlflow_exe = Path(sys.executable).parent / "mlflow"
        cmd = [str(mlflow_exe), "models", "serve", "-m", str(pkg), "--env-manager", "local"]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers)]
        url = f"http://127.0.0.1:{port}/invocations"
        with background(cmd, log, tool_env(), grace=20) as proc:
            why = wait_http(f"http://127.0.0.1:{port}/ping", proc, log, timeout=180)
            if why:
                raise SystemExit(f"model server did not come up: {why}")
            server = psutil.Process(proc.pid)
            rss_started = _tree_rss(server)
            lock = threading.Lock()
            budget = [args.max_requests]

            def client(seed: int, until: float, out: list) -> None:
                local = random.Random(seed)
                with requests.Session() as s:
                    while time.monotonic() < until:
                        with lock:
                            if budget[0] <= 0:
                                return
                            budget[0] -= 1
                        kind = local.choice(bad if local.random() < args.bad_fraction else good)
                        name, body, headers, ok = kind
                        t = time.perf_counter()
                        try:
                            status = s.post(url, data=body, headers=headers, timeout=60).status_code
                        except requests.RequestException:
                            status = 0  # no answer at all: counted against the goal
                        ms = (time.perf_counter() - t) * 1000
                        with lock:
                            out.append((name, status, ms, status in ok))

            def drive(seconds: float, out: list, seed: int) -> float:
                until = time.monotonic() + seconds
                started = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(max_workers=args.clients) as pool:
                    jobs = [pool.submit(client, seed + i, until, out) for i in range(args.clients)]
                    for f in jobs:
                        f.result()
                return time.perf_counter() - started

            # the same mix, as concurrent, first: every worker has loaded the model and its
            # request threads have their memory before the baseline
            warmup: list = []
            drive(args.warmup_seconds, warmup, args.seed + 1000)
            time.sleep(1.0)
            rss_before = _tree_rss(server)
            results: list[tuple[str, int, float, bool]] = []
            elapsed = drive(args.seconds, results, args.seed + 1)
            time.sleep(1.0)
            rss_after = _tree_rss(server)
            alive = proc.poll() is None

    by_kind: dict[str, dict] = {}
    for name, status, _, ok in results:
        entry = by_kind.setdefault(name, {"n": 0, "statuses": {}, "wrong": 0})
        entry["n"] += 1
        entry["statuses"][str(status)] = entry["statuses"].get(str(status), 0) + 1
        entry["wrong"] += not ok
    good_ms = [ms for name, _, ms, _ in results if name.startswith("good")]
    bad_ms = [ms for name, _, ms, _ in results if name.startswith("bad")]
    server_errors = sum(1 for _, status, _, _ in results if status >= 500 or status == 0)
    wrong = sum(1 for *_, ok in results if not ok)
    growth = (rss_after - rss_before) / rss_before * 100
    pairs = sum(int(n.split("_")[1]) for n, s, _, _ in results if n.startswith("good") and s == 200)
    print(
        json.dumps(
            {
                "benchmark": "serving_load",
                "cpu_count": os.cpu_count(),
                "load_average_1m": round(os.getloadavg()[0], 2),
                "server": f"mlflow models serve --workers {args.workers}",
                "model": {"encoder": "conv4", "image_size": args.image_size},
                "clients": args.clients,
                "seconds": round(elapsed, 2),
                "requests": len(results),
                "bad_fraction": args.bad_fraction,
                "throughput_rps": round(len(results) / elapsed, 2),
                "good_pairs_per_s": round(pairs / elapsed, 2),
                "latency_all": _stats([ms for _, _, ms, _ in results]),
                "latency_good": _stats(good_ms) if good_ms else None,
                "latency_bad": _stats(bad_ms) if bad_ms else None,
                "by_kind": dict(sorted(by_kind.items())),
                "server_errors_5xx_or_no_answer": server_errors,
                "wrong_status": wrong,
                "server_alive_after": alive,
                "warmup_requests": len(warmup),
                "rss_mib": {
                    "started": round(rss_started / 2**20, 1),
                    "before": round(rss_before / 2**20, 1),
                    "after": round(rss_after / 2**20, 1),
                    "growth_pct": round(growth, 2),
                },
                "goal": "zero 5xx, every answer as expected, RSS growth < 10%",
                "meets_goal": server_errors == 0 and wrong == 0 and alive and growth < 10.0,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
