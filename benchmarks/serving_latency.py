"""Served pair-verification latency on CPU: ``mlflow models serve`` over HTTP (one pair per
request, base64 PNGs in ``dataframe_split`` JSON, keep-alive connection) against the same
package's in-process pyfunc ``predict``, side by side in one run.

The package is the real one (``siamese.registry.package.save_package``: safetensors weights,
models from
code) around a conv4 encoder at 105 x 105 (Omniglot's size); latency does not depend on what the
weights learned, so they are freshly initialised. Inputs are AT&T faces resized to 105 x 105 when
the shared data is there, else random images. Prints JSON (goal: HTTP p50 <= 20 ms), with the
load average and the CPU time per pair (server process tree and in-process), which tell how far
wall-clock figures on a shared machine are from those on an idle core."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import SHARED_DATA, background, free_port, tool_env, wait_http


def _images(n: int, size: int) -> list[bytes]:
    from PIL import Image

    from siamese.data.images import encode_png

    faces = sorted((SHARED_DATA / "att_faces").glob("*/*.pgm"))
    if faces:
        picks = [faces[i * len(faces) // n] for i in range(n)]
        return [
            encode_png(np.asarray(Image.open(p).convert("L").resize((size, size)))) for p in picks
        ]
    rng = np.random.default_rng(0)
    return [encode_png(rng.integers(0, 256, (size, size), dtype=np.uint8)) for _ in range(n)]


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "mean_ms": round(float(a.mean()), 3),
        "min_ms": round(float(a.min()), 3),
        "n": len(ms),
    }


def _tree_cpu(proc) -> float:
    """CPU seconds (user + system) of a process and its children (the CLI runs uvicorn)."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except Exception:  # a child that just exited
            pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=105)
    ap.add_argument("--channels", type=int, default=32, help="conv4 width (params.yaml default)")
    ap.add_argument("--embedding-dim", type=int, default=64)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument(
        "--serve-threads", type=int, default=1, help="torch threads of the server (and reference)"
    )
    args = ap.parse_args()

    import mlflow
    import psutil
    import requests
    import torch

    from siamese.models.encoders import SiameseEncoder
    from siamese.registry.client import dataframe_split_json
    from siamese.registry.package import save_package

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        enc = SiameseEncoder("conv4", args.image_size, args.embedding_dim, args.channels, True)
        (tmp / "train").mkdir()
        torch.save(enc.state_dict(), tmp / "train" / "model.pt")
        (tmp / "train" / "model.json").write_text(json.dumps(enc.config))
        calibration = {
            "strategy": "max_accuracy",
            "threshold": 0.8,
            "probability": {"method": "platt", "a": -6.0, "b": 4.0},
        }
        pkg = save_package(tmp / "pkg", tmp / "train", calibration, 25_000_000)

        imgs = _images(64, args.image_size)
        frames = [
            pd.DataFrame({"image_a": [imgs[i % 64]], "image_b": [imgs[(i * 7 + 3) % 64]]})
            for i in range(args.requests)
        ]
        bodies = [dataframe_split_json(f) for f in frames]

        # in-process reference: the same package, the same single-pair frames, with the
        # server's thread count (siamese.registry.guard: 1 unless SIAMESE_SERVE_THREADS) and
        # torch's
        default_threads = torch.get_num_threads()
        model = mlflow.pyfunc.load_model(str(pkg))
        local: dict[int, tuple[list[float], list[float]]] = {}
        local_cpu: dict[int, float] = {}
        for threads in sorted({args.serve_threads, default_threads}):
            torch.set_num_threads(threads)
            for f in frames[: args.warmup]:
                model.predict(f)
            ms, dist = [], []
            cpu0 = time.process_time()
            for f in frames:
                t = time.perf_counter()
                out = model.predict(f)
                ms.append((time.perf_counter() - t) * 1000)
                dist.append(float(out["distance"][0]))
            local[threads] = (ms, dist)
            local_cpu[threads] = (time.process_time() - cpu0) * 1000 / len(frames)
        torch.set_num_threads(default_threads)
        local_ms, local_d = local[args.serve_threads]

        port = free_port()
        env = tool_env(SIAMESE_SERVE_THREADS=str(args.serve_threads))
        mlflow_exe = Path(sys.executable).parent / "mlflow"
        cmd = [str(mlflow_exe), "models", "serve", "-m", str(pkg), "--env-manager"]
        cmd += ["local", "--host", "127.0.0.1", "--port", str(port)]
        base = f"http://127.0.0.1:{port}"
        log = tmp / "serve.log"
        with background(cmd, log, env, grace=20) as proc:
            t0 = time.perf_counter()
            why = wait_http(f"{base}/ping", proc, log, timeout=180)
            if why:
                raise SystemExit(f"model server did not come up: {why}")
            startup_s = time.perf_counter() - t0
            session = requests.Session()
            headers = {"Content-Type": "application/json"}
            for body in bodies[: args.warmup]:
                session.post(f"{base}/invocations", data=body, headers=headers).raise_for_status()
            http_ms, http_d = [], []
            server = psutil.Process(proc.pid)
            cpu0 = _tree_cpu(server)
            for body in bodies:
                t = time.perf_counter()
                r = session.post(f"{base}/invocations", data=body, headers=headers)
                http_ms.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
                http_d.append(r.json()["predictions"][0]["distance"])
            server_cpu_ms = (_tree_cpu(server) - cpu0) * 1000 / len(bodies)

    http, in_process = _stats(http_ms), _stats(local_ms)
    print(
        json.dumps(
            {
                "benchmark": "serving_latency",
                "device": "cpu",
                "cpu_count": os.cpu_count(),
                "load_average_1m": round(os.getloadavg()[0], 2),
                "torch_threads": {"served": args.serve_threads, "torch_default": default_threads},
                "model": {
                    "encoder": "conv4",
                    "image_size": args.image_size,
                    "channels": args.channels,
                    "embedding_dim": args.embedding_dim,
                },
                "request": "1 pair, base64 PNG, dataframe_split JSON, keep-alive",
                "server_startup_s": round(startup_s, 2),
                "http": http,
                "in_process": in_process,
                "in_process_by_threads": {str(t): _stats(v[0]) for t, v in local.items()},
                "http_overhead_p50_ms": round(http["p50_ms"] - in_process["p50_ms"], 3),
                # CPU time per pair: what a request costs on an idle core, whatever the load
                "cpu_ms_per_pair": {
                    "server": round(server_cpu_ms, 3),
                    "in_process": {str(t): round(v, 3) for t, v in local_cpu.items()},
                },
                "answers_equal": bool(np.allclose(http_d, local_d, rtol=1e-12)),
                "goal_p50_ms": 20.0,
                "meets_goal": http["p50_ms"] <= 20.0,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
