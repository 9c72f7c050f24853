"""Scale: prepare throughput (images/s) and the peak resident memory of prepare, of the first
training steps and of evaluate, as the dataset grows (N = 10k, 100k, 300k colour images at
112 x 112 by default; ``--sizes`` for others). Prints JSON.

The datasets are built from the real images in ``../shared/data``: LFW people with two or more
photos (JPEG, 250 x 250 colour) and Omniglot characters (PNG, 105 x 105 gray), as seeded
augmented copies (a crop, a flip, a small rotation, colour and brightness jitter) under new
identity names (``<source>~<copy>``), written to a temporary folder as JPEG / PNG like the
originals. Each stage runs as the ``siamese`` console script in a fresh copy of the project,
and its process tree (the stage and its decode or DataLoader workers) is sampled every 50 ms:

- ``peak_rss_mb``: the largest resident set (what ``ps``/``top`` show), file pages included;
- ``peak_anon_mb``: the largest anonymous (private) part of it: what the stage itself allocated,
  without the pages of the memory-mapped image file that it shares with the page cache.

Goals (issue 14): the peak RSS of train and evaluate at the largest N within 1.5x of the 10k
figure; prepare time linear in N; prepare >= 1,500 LFW JPEGs/s to 112 x 112 on 2 cores
(``lfw_decode``: the real, unmodified LFW JPEGs through prepare's parallel decoder, in process).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import psutil
from _common import SHARED_DATA, make_project, tool_env
from PIL import Image, ImageEnhance, ImageOps

LFW = SHARED_DATA / "lfw" / "lfw"
OMNIGLOT = SHARED_DATA / "omniglot" / "images_background.zip"
MAX_PER_IDENTITY = 12  # a source identity's images used per copy (LFW has one man with 530)


def _sources() -> list[tuple[str, str, list[str]]]:
    """(kind, identity, [image locations]) of every source identity with two or more images,
    LFW and Omniglot interleaved so any prefix mixes both."""
    lfw = []
    for person in sorted(p for p in LFW.iterdir() if p.is_dir()):
        files = sorted(str(f) for f in person.iterdir())
        if len(files) >= 2:
            lfw.append(("lfw", person.name, files[:MAX_PER_IDENTITY]))
    with zipfile.ZipFile(OMNIGLOT) as zf:
        by_char: dict[str, list[str]] = {}
        for name in sorted(zf.namelist()):
            if name.endswith(".png"):
                char = "/".join(name.split("/")[-3:-1])
                by_char.setdefault(char, []).append(name)
    omni = [("omniglot", c.replace("/", "_"), f[:MAX_PER_IDENTITY]) for c, f in by_char.items()]
    mixed = []
    for i in range(max(len(lfw), len(omni))):
        mixed += [x[i] for x in (lfw, omni) if i < len(x)]
    return mixed


def _augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    s = rng.uniform(0.85, 1.0)
    cw, ch = int(w * s), int(h * s)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    fill = 255 if img.mode == "L" else (128, 128, 128)
    img = img.rotate(float(rng.uniform(-8, 8)), Image.Resampling.BILINEAR, fillcolor=fill)
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.8, 1.2)))
    if img.mode == "RGB":
        img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.7, 1.3)))
    return img


def _write_identity(job: tuple[int, str, str, list[str], str, int]) -> int:
    """One new identity: every image of a source identity, augmented with this copy's seed."""
    copy, kind, ident, files, out, seed = job
    rng = np.random.default_rng([seed, copy, len(ident), sum(map(ord, ident))])
    folder = Path(out) / f"{kind}_{ident}~{copy}"
    folder.mkdir(parents=True, exist_ok=True)
    zf = zipfile.ZipFile(OMNIGLOT) if kind == "omniglot" else None
    for k, f in enumerate(files):
        data = zf.read(f) if zf else Path(f).read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            img = _augment(img.convert("L" if kind == "omniglot" else "RGB"), rng)
            if kind == "omniglot":
                img.save(folder / f"{k:03d}.png", optimize=False)
            else:
                img.save(folder / f"{k:03d}.jpg", quality=90)
    if zf:
        zf.close()
    return len(files)


def build_dataset(out: Path, n: int, seed: int, workers: int) -> int:
    """At least ``n`` images (whole identities) under ``out``; returns the count written."""
    sources = _sources()
    jobs, total, copy = [], 0, 0
    while total < n:
        for kind, ident, files in sources:
            if total >= n:
                break
            jobs.append((copy, kind, ident, files, str(out), seed))
            total += len(files)
        copy += 1
    with ProcessPoolExecutor(workers) as pool:
        return sum(pool.map(_write_identity, jobs, chunksize=16))


def measured(cmd: list[str], cwd: Path, env: dict) -> dict:
    """Run ``cmd``; wall seconds and the peak RSS / anonymous memory of its process tree."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    root = psutil.Process(proc.pid)
    peak_rss = peak_anon = 0
    out: list[str] = []
    import threading

    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        rss = anon = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                m = p.memory_info()
                rss += m.rss
                anon += m.rss - m.shared
        except psutil.Error:
            pass
        peak_rss, peak_anon = max(peak_rss, rss), max(peak_anon, anon)
        time.sleep(0.05)
    reader.join()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{''.join(out)[-4000:]}")
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(peak_rss / 2**20),
        "peak_anon_mb": round(peak_anon / 2**20),
    }


def lfw_decode(n: int, workers: int) -> dict:
    """Real LFW JPEGs (250 x 250) to 112 x 112 RGB through prepare's parallel decoder."""
    from siamese.data.decoding import Decoder, decode_files
    from siamese.data.images import ImageSpec

    files = sorted(p for p in LFW.rglob("*.jpg"))[:n]
    blobs = [f.read_bytes() for f in files]  # read first: time the decoding, not the disk
    spec = ImageSpec(112, 112, 3)
    out = np.empty((len(files), *spec.shape), np.uint8)
    decoder = Decoder(workers=workers)
    start = time.perf_counter()
    errors = sum(
        d.error is not None
        for d in decode_files(blobs.__getitem__, [str(f) for f in files], spec, out, decoder)
    )
    seconds = time.perf_counter() - start
    # the same work in this process, timed in CPU seconds: what one dedicated core does, whatever
    # else the machine runs (a shared machine's wall-clock rate says more about its load)
    cpu = time.process_time()
    one = Decoder(workers=1)
    for _ in decode_files(blobs.__getitem__, [str(f) for f in files], spec, out, one):
        pass
    per_cpu_s = len(files) / (time.process_time() - cpu)
    return {
        "images": len(files),
        "workers": workers,
        "images_per_s": round(len(files) / seconds),
        "images_per_cpu_s": round(per_cpu_s),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 300_000])
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--workers", type=int, default=2, help="data.workers for prepare")
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: TMPDIR)")
    parser.add_argument("--lfw-decode", type=int, default=5000, help="JPEGs (0: skip)")
    args = parser.parse_args()
    results: dict = {
        "benchmark": "scale",
        "image_size": args.image_size,
        "channels": 3,
        "workers": args.workers,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "sizes": [],
    }
    if args.lfw_decode:
        results["lfw_decode"] = lfw_decode(args.lfw_decode, args.workers)
    exe = str(Path(sys.executable).parent / "siamese")
    env = tool_env(PYTHONUNBUFFERED="1")
    for n in args.sizes:
        with tempfile.TemporaryDirectory(dir=args.tmp, prefix="siamese-scale-") as tmp:
            tmp = Path(tmp)
            start = time.perf_counter()
            images = build_dataset(tmp / "faces", n, args.seed, args.workers)
            built_s = time.perf_counter() - start
            project = make_project(
                tmp / "project",
                [
                    f"data.source={tmp / 'faces'}",
                    f"data.image_size={args.image_size}",
                    "data.channels=3",
                    f"data.workers={args.workers}",
                    "data.on_duplicate_image=keep",  # augmented copies are never byte-identical
                    "train.max_epochs=1",
                    "train.images_per_identity=8",  # K: Omniglot copies hold 12 images
                    f"train.batches_per_epoch={args.train_steps}",
                    "train.num_workers=2",
                ],
            )
            row: dict = {"n": images, "dataset_build_s": round(built_s, 1)}
            for stage in ("prepare", "mine", "train", "calibrate", "evaluate"):
                row[stage] = measured([exe, stage], project, env)
            row["prepare"]["images_per_s"] = round(images / row["prepare"]["seconds"])
            store = project / "artifacts" / "prepared" / "images.npy"
            row["store_mb"] = round(store.stat().st_size / 2**20)
            row["free_disk_gb"] = round(shutil.disk_usage(tmp).free / 2**30, 1)
            results["sizes"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    first, last = results["sizes"][0], results["sizes"][-1]
    if len(results["sizes"]) > 1:
        results["ratio_largest_to_smallest"] = {
            "n": round(last["n"] / first["n"], 2),
            **{
                f"{stage}_peak_rss": round(
                    last[stage]["peak_rss_mb"] / first[stage]["peak_rss_mb"], 2
                )
                for stage in ("train", "evaluate")
            },
            "prepare_seconds": round(last["prepare"]["seconds"] / first["prepare"]["seconds"], 2),
        }
    results["goals"] = {
        "train_and_evaluate_peak_rss_ratio_max": 1.5,
        "lfw_jpegs_per_s_on_2_cores": 1500,
        "prepare_seconds": "linear in n",
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
