"""Gallery benchmarks (issue 18). Prints JSON.

``index``: identification search against galleries of 10^4 and 10^6 vectors (``--sizes``) with
the FAISS indexes siamese index builds (flat: exact; IVF: ``nlist`` ~ 4 sqrt(n) cells,
``nprobe`` nlist / 8, siamese.registry.gallery's defaults, its k-means trained here on 39
vectors a cell) and HNSW (M = 16, efSearch 64, for comparison): build seconds, index bytes
(serialised, what the gallery folder holds), single-query latency (median and p99 of 200
one-at-a-time searches, 1 thread: one request) and recall@1 of the approximate indexes against
the exact one on 1000 queries. The vectors are synthetic but shaped like embeddings: unit vectors
(dim 64) of identities of 10 samples each around random centres, queries new samples of enrolled
identities.

``openset``: FNIR at FPIR 1% and 10%, rank-1 and the anomaly AUROC
(siamese.evaluation.openset) on people the model never trained on: a model is trained on the
first AT&T people (``--att-train``) and, with ``--lfw``, on LFW people with 4+ photos, then
evaluated on the remaining people, split (seeded) into enrolled (1 gallery photo) and not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import SHARED_DATA, make_project

DIM = 64


def _vectors(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = max(1, n // 10)
    centres = rng.normal(size=(ids, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(ids), 10)[:n]
    x = centres[labels] + rng.normal(scale=0.35 / np.sqrt(DIM), size=(n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q_labels = rng.integers(0, ids, 1000)
    q = centres[q_labels] + rng.normal(scale=0.35 / np.sqrt(DIM), size=(1000, DIM)).astype(
        np.float32
    )
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.ascontiguousarray(x), np.ascontiguousarray(q, dtype=np.float32), labels


def _latency(index, q: np.ndarray) -> dict:
    times = []
    for row in q[:200]:
        t = time.perf_counter()
        index.search(row[None], 1)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return {
        "latency_ms_p50": round(float(np.median(ms)), 4),
        "latency_ms_p99": round(float(np.quantile(ms, 0.99)), 4),
    }


def bench_index(sizes: list[int], seed: int) -> dict:
    import faiss

    faiss.omp_set_num_threads(1)  # one request's search, as a served query runs
    rng = np.random.default_rng(seed)
    out = {}
    for n in sizes:
        x, q, _ = _vectors(n, rng)
        row: dict = {"vectors": n, "dim": DIM}
        exact = None
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
        kinds = {
            "flat": lambda: faiss.IndexFlatL2(DIM),
            "ivf": lambda nlist=nlist: faiss.IndexIVFFlat(faiss.IndexFlatL2(DIM), DIM, nlist),
            "hnsw": lambda: faiss.IndexHNSWFlat(DIM, 16),
        }
        for kind, make in kinds.items():
            faiss.omp_set_num_threads(os.cpu_count() or 1)  # building may use every core
            t = time.perf_counter()
            index = make()
            if kind == "ivf":  # k-means on 39 points a cell (FAISS's least without a warning)
                sample = rng.choice(n, min(n, 39 * nlist), replace=False)
                index.train(x[np.sort(sample)])
                index.nprobe = max(1, nlist // 8)
            index.add(x)
            build = time.perf_counter() - t
            if kind == "hnsw":
                index.hnsw.efSearch = 64
            faiss.omp_set_num_threads(1)
            _, top = index.search(q, 1)
            if exact is None:
                exact = top[:, 0]
            stats = {
                "build_s": round(build, 3),
                "index_mb": round(faiss.serialize_index(index).nbytes / 1e6, 2),
                **_latency(index, q),
                "recall_at_1_vs_exact": float(np.mean(top[:, 0] == exact)),
            }
            if kind == "ivf":
                stats.update(nlist=nlist, nprobe=index.nprobe)
            row[kind] = stats
            del index
        row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        out[str(n)] = row
        print(json.dumps({str(n): row}), file=sys.stderr, flush=True)
    return out


def _train(data: Path, overrides: list[str], workdir: Path):
    """Train in a fresh project copy (in process); the exported encoder."""
    from siamese import paths
    from siamese.config import load_params
    from siamese.models.loading import load_encoder
    from siamese.params_file import set_params
    from siamese.stages.calibrate import run_calibrate
    from siamese.stages.mine import run_mine
    from siamese.stages.prepare import run_prepare
    from siamese.stages.train import run_train

    project = make_project(workdir / "project")
    os.chdir(project)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    set_params(project / "params.yaml", [f"data.source={data}", *overrides])
    params = load_params(project / "params.yaml")
    run_prepare(params, paths.PREPARED)
    run_mine(params, paths.PREPARED, paths.PAIRS)
    run_train(params, paths.PREPARED, paths.PAIRS, paths.TRAIN, paths.TRAIN_METRICS)
    run_calibrate(params, paths.PREPARED, paths.PAIRS, paths.TRAIN, paths.CALIBRATION)
    return load_encoder(paths.TRAIN), params


def _openset_on(people: list[Path], encoder, params, seed: int) -> dict:
    from siamese.data.sources import load_folder_dataset
    from siamese.evaluation.openset import openset_report
    from siamese.models.loading import embed

    with tempfile.TemporaryDirectory() as tmp:
        for p in people:
            shutil.copytree(p, Path(tmp) / p.name)
        data = load_folder_dataset(tmp, params.data.image, min_images=1)
    emb = embed(encoder, data.images).astype(np.float64)
    report, anomaly, _ = openset_report(
        encoder, emb, np.asarray(data.identities), 0.5, 1, [0.01, 0.1], 1, seed
    )
    return {"people": len(people), "openset": report, "anomaly": anomaly}


COMMON = [
    "calibrate.bootstrap_resamples=0",
    "mine.train_pairs=50",
    "train.monitor=last",
    "model.channels=32",
    "model.embedding_dim=64",
]


def bench_openset(att_train: int, lfw: bool, seed: int) -> dict:
    out = {}
    att = SHARED_DATA / "att_faces"
    if att.exists():
        people = sorted(p for p in att.iterdir() if p.is_dir())
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "faces"
            for p in people[:att_train]:
                shutil.copytree(p, data / p.name)
            overrides = [
                *COMMON,
                "data.image_size=32",
                "data.val_fraction=0.15",
                "data.test_fraction=0.1",
                "mine.val_pairs=100",
                "mine.test_pairs=20",
                "train.identities_per_batch=8",
                "train.images_per_identity=5",
                "train.batches_per_epoch=20",
                "train.max_epochs=20",
            ]
            t = time.perf_counter()
            encoder, params = _train(data, overrides, Path(tmp))
            took = time.perf_counter() - t
            out["att_faces"] = {
                "trained_on_people": att_train,
                "train_s": round(took, 1),
                **_openset_on(people[att_train:], encoder, params, seed),
            }
            print(json.dumps({"att_faces": out["att_faces"]}), file=sys.stderr, flush=True)
    else:
        out["att_faces"] = {"skipped": f"no {att}"}
    root = SHARED_DATA / "lfw" / "lfw"
    if lfw and root.exists():
        people = sorted(p for p in root.iterdir() if p.is_dir() and len(list(p.iterdir())) >= 4)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(people))
        train, held = [people[i] for i in order[:300]], [people[i] for i in order[300:500]]
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "lfw"
            for p in train:
                shutil.copytree(p, data / p.name)
            overrides = [
                *COMMON,
                "data.image_size=48",
                "data.channels=3",
                "data.resize=crop",
                "data.val_fraction=0.1",
                "data.test_fraction=0.01",
                "mine.val_pairs=200",
                "mine.test_pairs=20",
                "train.identities_per_batch=16",
                "train.images_per_identity=4",
                "train.batches_per_epoch=30",
                "train.max_epochs=15",
            ]
            t = time.perf_counter()
            encoder, params = _train(data, overrides, Path(tmp))
            out["lfw"] = {
                "trained_on_people": len(train),
                "train_s": round(time.perf_counter() - t, 1),
                **_openset_on(held, encoder, params, seed),
            }
    elif lfw:
        out["lfw"] = {"skipped": f"no {root}"}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,1000000", help="gallery sizes, comma-separated")
    ap.add_argument("--skip-index", action="store_true")
    ap.add_argument("--skip-openset", action="store_true")
    ap.add_argument("--att-train", type=int, default=20, help="AT&T people trained on")
    ap.add_argument("--lfw", action="store_true", help="also train on and evaluate LFW people")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    result: dict = {}
    if not args.skip_index:
        result["index"] = bench_index([int(s) for s in args.sizes.split(",")], args.seed)
    if not args.skip_openset:
        here = os.getcwd()
        try:
            result["openset"] = bench_openset(args.att_train, args.lfw, args.seed)
        finally:
            os.chdir(here)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
