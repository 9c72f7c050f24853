"""Served pair-verification latency on CPU, torch against onnxruntime: for each encoder and
runtime (``serve.runtime``), ``mlflow models serve`` over HTTP (base64 PNGs in
``dataframe_split`` JSON, keep-alive connection) and the same package's in-process pyfunc
``predict``, for one pair and for 64 pairs per request, side by side in one run.

Each package is the real one (``siamese.registry.package.save_package``: safetensors weights, the
ONNX export checked against PyTorch on the benchmark's images, models from code) around an
encoder at 105 x 105 (Omniglot's size); latency does not depend on what the weights learned, so
they are freshly initialised. Inputs are AT&T faces resized to 105 x 105 when the shared data is
there, else random images. Prints JSON: p50 / p99 per encoder, runtime, batch and transport, the
onnx/torch p50 ratios (goal: <= 0.5 for one pair with conv4, in process), whether both runtimes
answered the same distances (within the export's parity tolerance), the load average and the
CPU time per pair, which tell how far wall-clock figures on a shared machine are from an idle
core's. The servers and the in-process reference run inference on ``--serve-threads`` threads
(1: what ``mlflow models serve`` uses unless SIAMESE_SERVE_THREADS says otherwise)."""

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


def _package(tmp: Path, encoder: str, args, runtime: str, sample: np.ndarray) -> Path:
    import torch

    from siamese.models.encoders import SiameseEncoder
    from siamese.models.loading import save_encoder
    from siamese.registry.package import save_package

    train = tmp / f"train-{encoder}"
    if not train.exists():
        torch.manual_seed(0)
        widths = {"resnet12": {"widths": [64, 160, 320, 640]}}.get(encoder)
        enc = SiameseEncoder(
            encoder,
            args.image_size,
            args.embedding_dim,
            args.channels,
            True,
            encoder_args=widths,
        )
        train.mkdir()
        save_encoder(enc.eval(), train)
    calibration = {
        "strategy": "max_accuracy",
        "threshold": 0.8,
        "probability": {"method": "platt", "a": -6.0, "b": 4.0},
    }
    return save_package(
        tmp / f"pkg-{encoder}-{runtime}",
        train,
        calibration,
        25_000_000,
        max_rows=10_000,
        runtime=runtime,
        onnx_sample=sample,
    )


def _frames(imgs: list[bytes], pairs: int, requests: int) -> list[pd.DataFrame]:
    n = len(imgs)
    return [
        pd.DataFrame(
            {
                "image_a": [imgs[(r * pairs + i) % n] for i in range(pairs)],
                "image_b": [imgs[((r * pairs + i) * 7 + 3) % n] for i in range(pairs)],
            }
        )
        for r in range(requests)
    ]


def _in_process(pkg: Path, frames: list[pd.DataFrame], warmup: int) -> tuple[dict, list]:
    import mlflow

    model = mlflow.pyfunc.load_model(str(pkg))
    for f in frames[:warmup]:
        model.predict(f)
    ms, dist = [], []
    cpu0 = time.process_time()
    for f in frames:
        t = time.perf_counter()
        out = model.predict(f)
        ms.append((time.perf_counter() - t) * 1000)
        dist += out["distance"].tolist()
    pairs = sum(len(f) for f in frames)
    stats = _stats(ms) | {"cpu_ms_per_pair": round((time.process_time() - cpu0) * 1e3 / pairs, 3)}
    return stats, dist


def _over_http(pkg: Path, batches: dict[int, list[pd.DataFrame]], args) -> tuple[dict, dict]:
    import psutil
    import requests

    from siamese.registry.client import dataframe_split_json

    port = free_port()
    env = tool_env(SIAMESE_SERVE_THREADS=str(args.serve_threads))
    mlflow_exe = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow_exe), "models", "serve", "-m", str(pkg), "--env-manager"]
    cmd += ["local", "--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    out, dists = {}, {}
    with background(cmd, pkg.parent / f"{pkg.name}.log", env, grace=20) as proc:
        t0 = time.perf_counter()
        why = wait_http(f"{base}/ping", proc, pkg.parent / f"{pkg.name}.log", timeout=180)
        if why:
            raise SystemExit(f"model server did not come up: {why}")
        out["server_startup_s"] = round(time.perf_counter() - t0, 2)
        session = requests.Session()
        headers = {"Content-Type": "application/json"}
        server = psutil.Process(proc.pid)
        for pairs, frames in batches.items():
            bodies = [dataframe_split_json(f) for f in frames]
            for body in bodies[: args.warmup]:
                session.post(f"{base}/invocations", data=body, headers=headers).raise_for_status()
            ms, dist = [], []
            cpu0 = _tree_cpu(server)
            for body in bodies:
                t = time.perf_counter()
                r = session.post(f"{base}/invocations", data=body, headers=headers)
                ms.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
                dist += [row["distance"] for row in r.json()["predictions"]]
            cpu = (_tree_cpu(server) - cpu0) * 1000 / (pairs * len(bodies))
            out[f"{pairs}_pairs"] = _stats(ms) | {"server_cpu_ms_per_pair": round(cpu, 3)}
            dists[pairs] = dist
    return out, dists


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoders", nargs="+", default=["conv4", "resnet12", "resnet18"])
    ap.add_argument("--runtimes", nargs="+", default=["torch", "onnx"])
    ap.add_argument("--image-size", type=int, default=105)
    ap.add_argument("--channels", type=int, default=32, help="conv4 width (params.yaml default)")
    ap.add_argument("--embedding-dim", type=int, default=64)
    ap.add_argument("--requests", type=int, default=300, help="one-pair requests (conv4)")
    ap.add_argument("--batch-requests", type=int, default=30, help="64-pair requests (conv4)")
    ap.add_argument(
        "--resnet-scale", type=float, default=0.2, help="ResNets: this share of the requests"
    )
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--no-http", action="store_true", help="in process only")
    ap.add_argument(
        "--serve-threads", type=int, default=1, help="inference threads (server and in process)"
    )
    args = ap.parse_args()

    import torch

    from siamese.data.images import ImageSpec, decode_image
    from siamese.models.onnx import PARITY_TOLERANCE

    torch.set_num_threads(args.serve_threads)  # before the ONNX sessions, which take it too
    imgs = _images(64, args.image_size)
    spec = ImageSpec(args.image_size, args.image_size, 1)
    sample = np.stack([decode_image(b, spec) for b in imgs])
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for encoder in args.encoders:
            scale = 1.0 if encoder == "conv4" else args.resnet_scale
            batches = {
                1: _frames(imgs, 1, max(20, int(args.requests * scale))),
                64: _frames(imgs, 64, max(3, int(args.batch_requests * scale))),
            }
            row: dict = {}
            answers: dict = {}
            for runtime in args.runtimes:
                pkg = _package(tmp, encoder, args, runtime, sample)
                entry: dict = {"in_process": {}}
                for pairs, frames in batches.items():
                    stats, dist = _in_process(pkg, frames, args.warmup)
                    entry["in_process"][f"{pairs}_pairs"] = stats
                    answers[(runtime, "in_process", pairs)] = dist
                if not args.no_http:
                    entry["http"], dists = _over_http(pkg, batches, args)
                    for pairs, dist in dists.items():
                        answers[(runtime, "http", pairs)] = dist
                row[runtime] = entry
            if {"torch", "onnx"} <= set(args.runtimes):
                row["onnx_to_torch_p50"] = {
                    f"{where}_{pairs}_pairs": round(
                        row["onnx"][where][f"{pairs}_pairs"]["p50_ms"]
                        / row["torch"][where][f"{pairs}_pairs"]["p50_ms"],
                        3,
                    )
                    for where in (["in_process"] + ([] if args.no_http else ["http"]))
                    for pairs in batches
                }
                reference = answers[("torch", "in_process", 1)]
                row["answers_within_parity"] = all(
                    np.allclose(d, answers[("torch", k[1], k[2])], rtol=0, atol=PARITY_TOLERANCE)
                    for k, d in answers.items()
                ) and bool(np.allclose(answers[("onnx", "in_process", 1)], reference, atol=1e-4))
            results[encoder] = row

    conv4 = results.get("conv4", {}).get("onnx_to_torch_p50", {})
    print(
        json.dumps(
            {
                "benchmark": "serving_latency",
                "device": "cpu",
                "cpu_count": os.cpu_count(),
                "load_average_1m": round(os.getloadavg()[0], 2),
                "inference_threads": args.serve_threads,
                "image_size": args.image_size,
                "channels_conv4": args.channels,
                "embedding_dim": args.embedding_dim,
                "request": "base64 PNG pairs, dataframe_split JSON, keep-alive",
                "encoders": results,
                "goal": "onnx p50 <= 0.5 x torch p50, one pair, conv4 at 105 x 105, in process",
                "conv4_one_pair_ratio": conv4.get("in_process_1_pairs"),
                "meets_goal": conv4.get("in_process_1_pairs", 9.9) <= 0.5,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
