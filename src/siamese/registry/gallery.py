"""A searchable gallery of embeddings (``siamese index`` / ``siamese search``).

Images of an identity-folder dataset are embedded by a logged model (through its served pyfunc,
so with the package's own preprocessing) and indexed under the model's own metric:

* euclidean / squared_euclidean: FAISS L2 (squared L2 scores; euclidean takes the root);
* cosine: FAISS inner product on unit vectors (distance ``1 - ip``);
* a learned head (Koch et al.'s weighted L1): no FAISS metric fits, so search is brute force
  through ``encoder.distance_matrix``.

An exact flat index serves small galleries; above ``ivf_above`` vectors an IVF index (inverted
lists over k-means cells, ``nprobe`` cells visited per query) trades exactness for speed. The
gallery folder (index, embeddings, labels, paths, model URI) is written atomically."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import torch

from siamese.data.decoding import Decoder
from siamese.data.files import read_file
from siamese.data.images import decode_image
from siamese.data.sources import load_folder_dataset
from siamese.data.store import IMAGES_FILE
from siamese.errors import GalleryError
from siamese.io import atomic_dir, read_json, write_json
from siamese.locking import gallery_lock
from siamese.registry.loading import load_served_model, resolve_model_uri

GALLERY_FILE, INDEX_FILE, EMBEDDINGS_FILE = "gallery.json", "index.faiss", "embeddings.npy"
DEFAULT_IVF_ABOVE = 10_000
FORMAT_VERSION = 1


def index_kind(distance: str, n: int, ivf_above: int) -> str:
    if distance == "learned":
        return "brute"
    return "ivf" if n > ivf_above else "flat"


def _faiss_vectors(emb: np.ndarray, distance: str) -> np.ndarray:
    x = np.ascontiguousarray(emb, dtype=np.float32)
    if distance == "cosine":
        faiss.normalize_L2(x)
    return x


def _build_faiss(x: np.ndarray, distance: str, kind: str, nlist: int) -> object:
    d = x.shape[1]
    metric = faiss.METRIC_INNER_PRODUCT if distance == "cosine" else faiss.METRIC_L2
    if kind == "flat":
        index = faiss.IndexFlatIP(d) if distance == "cosine" else faiss.IndexFlatL2(d)
    else:
        quantizer = faiss.IndexFlatIP(d) if distance == "cosine" else faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, metric)
        index.train(x)
    index.add(x)
    return index


def _scores_to_distances(scores: np.ndarray, distance: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if distance == "cosine":
        return np.clip(1.0 - s, 0.0, None)
    if distance == "euclidean":
        return np.sqrt(np.clip(s, 0.0, None))
    return np.clip(s, 0.0, None)


def embed_folder(root: str | Path, model, out: Path) -> tuple[np.ndarray, object]:
    """Embed every image under ``root`` with the served ``model``: (float64 embeddings, the
    loaded dataset, its ``images`` dropped), for a gallery at ``out``.

    A gallery is searched, not trained on: an image filed under two identities, or twice under
    one, is kept (every file is a gallery entry). Decoded in parallel into a scratch file beside
    the output, mapped from disk, and embedded a batch at a time: a gallery larger than memory
    can be indexed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # named by the process: enrolment's recovery removes only a dead process's
    decode = f".{out.name}.decode-{os.getpid()}."
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=decode) as scratch:
        data = load_folder_dataset(
            root,
            model.image,
            min_images=1,
            on_duplicate_image="keep",
            drop_copies=False,
            decoder=Decoder(workers=None, path=Path(scratch) / IMAGES_FILE),
        )
        emb = model.embeddings(data.images)
        data.images = None  # unmapped before the scratch folder goes
    return emb, data


def encoder_fingerprint(encoder) -> str:
    """SHA-256 of an encoder's architecture config and weights (every tensor's name, shape,
    dtype and bytes, in name order): the same for a model however it was stored or loaded."""
    h = hashlib.sha256(json.dumps(encoder.config, sort_keys=True).encode())
    for key, tensor in sorted(encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def source_files(root: str | Path, sources: list[str]) -> list[str | None]:
    """Each entry's image file (absolute), to embed it again with another model; None where
    the entry has no file of its own (a zip member)."""
    root = Path(root).resolve()
    if not root.is_dir():
        return [None] * len(sources)
    return [str(root / s) for s in sources]


def write_gallery(out: Path, meta: dict, emb: np.ndarray, index: object | None) -> None:
    """The gallery folder, written in a scratch folder and renamed into place (atomic_dir):
    a reader sees the old gallery or the new one, never a mix."""
    with atomic_dir(out) as tmp:
        np.save(tmp / EMBEDDINGS_FILE, emb.astype(np.float32))
        if index is not None:
            faiss.write_index(index, str(tmp / INDEX_FILE))
        write_json(tmp / GALLERY_FILE, meta)


def build_gallery(
    root: str | Path,
    model_uri: str,
    out: str | Path,
    tracking_uri: str | None = None,
    ivf_above: int = DEFAULT_IVF_ABOVE,
    nlist: int | None = None,
    nprobe: int | None = None,
    runtime: str | None = None,
    calibrate: Callable[[object, dict], dict] | None = None,
) -> dict:
    """Embed every image under ``root`` (``<identity>/<image>``, or any layout prepare reads) and
    write the gallery folder ``out`` atomically; returns its summary. ``runtime``: torch or onnx
    (default: the package's ``serve.runtime``). ``calibrate``: given the served model and the
    gallery's entries, those added to gallery.json in the same write (the open-set and anomaly
    thresholds, siamese.registry.identify)."""

    resolved = resolve_model_uri(model_uri, tracking_uri)
    model = load_served_model(resolved, tracking_uri, runtime)
    out = Path(out)
    emb, data = embed_folder(root, model, out)
    distance = model.encoder.config["distance"]
    n = len(emb)
    kind = index_kind(distance, n, ivf_above)
    meta = {
        "format": FORMAT_VERSION,
        "model": resolved,
        "model_config": model.encoder.config,
        "distance": distance,
        "index": kind,
        "count": n,
        "dim": int(emb.shape[1]),
        "identities": data.identities,
        "paths": data.sources,
        "root": str(Path(root).resolve()),
        # the weights themselves, so a gallery is never searched with other weights of the same
        # architecture (another version), and the files, so it can be embedded again
        "encoder_sha256": encoder_fingerprint(model.encoder),
        "files": source_files(root, data.sources),
    }
    index = None
    if kind != "brute":
        x = _faiss_vectors(emb, distance)
        if kind == "ivf":
            nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
            nlist = min(nlist, n)
            nprobe = min(nprobe or max(1, nlist // 8), nlist)
            meta.update(nlist=int(nlist), nprobe=int(nprobe))
        index = _build_faiss(x, distance, kind, nlist or 1)
    if calibrate is not None:
        meta.update(calibrate(model, meta))
    with gallery_lock(out):  # readers and enrolment see the old gallery or this one
        write_gallery(out, meta, emb, index)
    keys = ("model", "distance", "index", "count", "dim", "open_set", "anomaly")
    return {k: meta[k] for k in keys if k in meta} | {
        "identities": len(set(data.identities)),
        "out": str(out),
    }


def read_gallery(path: str | Path) -> dict:
    path = Path(path)
    if not (path / GALLERY_FILE).is_file():
        raise GalleryError(f"{path} is not a gallery (no {GALLERY_FILE}); build one: siamese index")
    meta = read_json(path / GALLERY_FILE)
    if meta.get("format") != FORMAT_VERSION:
        raise GalleryError(f"{path}: unsupported gallery format {meta.get('format')}")
    return meta


def recover_interrupted_write(path: str | Path, writer: bool = True) -> list[str]:
    """Undo what a killed writer of the gallery ``path`` left; call it holding the gallery's
    lock (every write of the folder happens under the exclusive lock, so whatever a holder finds
    is a dead writer's). When ``path`` is missing, the previous gallery parked as
    ``.<name>.old-<pid>`` (a kill between atomic_dir's two renames) goes back: safe under the
    shared lock too. A ``writer`` (exclusive lock) also removes parked galleries no longer
    needed and half-written scratch folders (``.<name>.*.tmp``). Returns what it did."""

    path = Path(path)
    parent, name = path.parent, path.name
    if not parent.is_dir():
        return []
    done = []
    parked = sorted(
        (p for p in parent.glob(f".{name}.old-*") if (p / GALLERY_FILE).is_file()),
        key=lambda p: p.stat().st_mtime,
    )
    if not path.exists() and parked:
        with contextlib.suppress(FileNotFoundError):  # a concurrent reader restored it first
            os.replace(parked[-1], path)
            done.append(f"restored {parked[-1].name} as {name}")
    if writer:
        for p in [*parent.glob(f".{name}.old-*"), *parent.glob(f".{name}.*.tmp")]:
            if p.exists() and not p.name.startswith(f".{name}.decode-"):
                shutil.rmtree(p, ignore_errors=True)
                done.append(f"removed {p.name}")
        # images decoded by a dead process (`siamese index` decodes outside the lock)
        for p in parent.glob(f".{name}.decode-*"):
            pid = p.name.removeprefix(f".{name}.decode-").split(".")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)
                done.append(f"removed {p.name}")
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def require_gallery(path: Path) -> None:
    """A clear error for a folder that is no gallery, before any lock file is made beside it
    (a gallery parked by a killed writer counts: the lock's holder restores it)."""
    if not (path / GALLERY_FILE).is_file() and not list(path.parent.glob(f".{path.name}.old-*")):
        read_gallery(path)  # raises, naming the folder and how to build a gallery


def check_gallery_model(meta: dict, model, model_uri: str | None) -> None:
    """Refuse a model other than the one that embedded the gallery (its config differs): its
    distances to the gallery's embeddings would mean nothing."""
    # a gallery built before colour and resize existed recorded a gray, stretched model
    # (and before encoder_args: a built-in encoder with its defaults)
    built_with = {"in_channels": 1, "resize": "stretch", "encoder_args": {}, **meta["model_config"]}
    if model.encoder.config != built_with:
        raise GalleryError(
            f"model {model_uri} is not the one that built the gallery ({meta['model']}): "
            "its config differs"
        )
    recorded = meta.get("encoder_sha256")  # galleries built before it was recorded lack it
    if recorded and encoder_fingerprint(model.encoder) != recorded:
        raise GalleryError(
            f"model {model_uri or meta['model']} is not the one that embedded the gallery "
            f"({meta['model']}): its weights differ; rebuild the gallery with it "
            "(siamese index) or query with the gallery's own model"
        )


def search_embeddings(
    path: str | Path, meta: dict, query: np.ndarray, k: int, encoder=None
) -> list[list[dict]]:
    """For each query embedding, the ``k`` nearest identities (each at its nearest image)."""
    path = Path(path)
    n = meta["count"]
    ids, paths = meta["identities"], meta["paths"]
    if meta["index"] == "brute":
        if encoder is None:
            raise GalleryError("a learned-distance gallery needs the model's encoder to search")
        gallery = np.load(path / EMBEDDINGS_FILE).astype(np.float64)
        with torch.no_grad():
            dist = encoder.distance_matrix(
                torch.from_numpy(np.asarray(query, np.float64)), torch.from_numpy(gallery)
            ).numpy()
        order = np.argsort(dist, axis=1, kind="stable")
        rows = [(order[i], dist[i, order[i]]) for i in range(len(query))]
    else:
        index = faiss.read_index(str(path / INDEX_FILE))
        if meta["index"] == "ivf":
            index.nprobe = int(meta["nprobe"])
        n_ids = len(set(ids))
        kk = min(n, max(20 * k, 100))
        while True:
            scores, idx = index.search(_faiss_vectors(query, meta["distance"]), kk)
            enough = all(len({ids[j] for j in row if j >= 0}) >= min(k, n_ids) for row in idx)
            if enough or kk >= n:
                break
            kk = min(n, kk * 4)
        dist = _scores_to_distances(scores, meta["distance"])
        rows = [(idx[i][idx[i] >= 0], dist[i][idx[i] >= 0]) for i in range(len(query))]
    out = []
    for order, dists in rows:
        seen: dict[str, dict] = {}
        for j, d in zip(order, dists, strict=True):
            name = ids[int(j)]
            if name not in seen:
                seen[name] = {"identity": name, "distance": float(d), "path": paths[int(j)]}
                if len(seen) == k:
                    break
        out.append([{"rank": r + 1, **hit} for r, hit in enumerate(seen.values())])
    return out


def search_image(
    path: str | Path,
    image: str | Path,
    k: int = 5,
    model_uri: str | None = None,
    tracking_uri: str | None = None,
    runtime: str | None = None,
) -> list[dict]:
    """The ``k`` nearest identities to one image file, under the gallery's model (its encoder
    run by ``runtime``: torch or onnx; default: the package's)."""

    meta = read_gallery(path)
    model = load_served_model(model_uri or meta["model"], tracking_uri, runtime)
    check_gallery_model(meta, model, model_uri)
    data = read_file(image)
    arr = decode_image(data, model.image, name=str(image), max_pixels=model.max_pixels)
    query = model.embeddings(arr[None])
    return search_embeddings(path, meta, query, k, model.encoder)[0]
