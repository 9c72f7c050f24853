"""Load a trained encoder and embed images: shared by calibrate, evaluate, register and serving so
that every consumer computes distances the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from siamese.data.artifacts import PreparedData, load_pairs, pairs_path
from siamese.io import read_json, write_json
from siamese.models.encoders import SiameseEncoder, preprocess
from siamese.models.onnx import OnnxEncoder
from siamese.models.precision import to_numpy

WEIGHTS_SAFETENSORS, WEIGHTS_TORCH = "model.safetensors", "model.pt"
CONFIG_FILE = "model.json"  # the architecture an encoder is rebuilt from
TRAINING_OUTPUT = (WEIGHTS_TORCH, CONFIG_FILE)  # what save_encoder writes


def encoder_from_config(cfg: dict) -> SiameseEncoder:
    """An untrained encoder built from its ``model.json`` config."""
    return SiameseEncoder(
        cfg["encoder"],
        cfg["image_size"],
        cfg["embedding_dim"],
        cfg["channels"],
        cfg["normalize"],
        cfg.get("distance", "euclidean"),
        cfg.get("head"),
        # a model.json written before colour and resize existed: gray, stretched
        in_channels=cfg.get("in_channels", 1),
        resize=cfg.get("resize", "stretch"),
        # a model.json written before encoder_args existed: a built-in with its defaults
        encoder_args=cfg.get("encoder_args"),
    )


def load_state_dict(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """The encoder's tensors, never arbitrary objects: ``model.safetensors`` (no pickle at all)
    when present, else ``model.pt`` through ``torch.load(weights_only=True)``."""
    model_dir = Path(model_dir)
    if (model_dir / WEIGHTS_SAFETENSORS).is_file():
        return load_file(model_dir / WEIGHTS_SAFETENSORS, device="cpu")
    return torch.load(model_dir / WEIGHTS_TORCH, map_location="cpu", weights_only=True)


def save_safetensors(state: dict[str, torch.Tensor], path: str | Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))


def save_encoder(encoder: SiameseEncoder, out_dir: str | Path) -> None:
    """The training output ``load_encoder`` reads: the encoder alone as a plain state dict
    (loadable with weights_only=True) and its architecture config. Floating tensors are
    saved as float32, the dtype every consumer runs, whatever precision trained them
    (``bf16-true``, ``64-true``)."""
    out_dir = Path(out_dir)
    state = {
        k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in encoder.state_dict().items()
    }
    torch.save(state, out_dir / WEIGHTS_TORCH)
    write_json(out_dir / CONFIG_FILE, {**encoder.config, "preprocess": "uint8/127.5-1"})


def load_encoder(model_dir: str | Path) -> SiameseEncoder:
    model_dir = Path(model_dir)
    enc = encoder_from_config(read_json(model_dir / CONFIG_FILE))
    enc.load_state_dict(load_state_dict(model_dir))
    enc.eval()
    # NHWC convolutions (oneDNN) run ~1.8x faster on CPU; every consumer (calibrate, evaluate,
    # register, serving) loads through here and embeds through embed(), so all see one numerics
    return enc.to(memory_format=torch.channels_last)


def _as_tensor(array: np.ndarray, dtype=None) -> torch.Tensor:
    """A tensor sharing a contiguous, writable array's memory, else of a copy: torch cannot
    mark a tensor read-only, so it warns on (and could write into) a read-only array, which
    ``np.asarray`` of a decoded PIL image or a slice of one is."""
    array = np.ascontiguousarray(array, dtype=dtype)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


@torch.no_grad()
def embed(
    encoder: torch.nn.Module | OnnxEncoder,
    images: np.ndarray,
    batch_size: int = 512,
    indices: np.ndarray | None = None,
) -> np.ndarray:
    """uint8 (N, H, W, C) images (or (N, H, W): C = 1) -> float32 (N, D) embeddings; with
    ``indices``, of those rows only, in their order.

    Streamed: one batch of rows is read at a time, so ``images`` may be a memory-mapped file
    (``PreparedData.images``) far larger than memory; only the embeddings are kept. ``encoder``
    is the PyTorch network or its ONNX export (:class:`OnnxEncoder`, which takes the uint8
    batch itself and normalises inside its graph)."""
    n = len(images) if indices is None else len(indices)
    out: np.ndarray | None = None
    for i in range(0, n, batch_size):
        rows = slice(i, i + batch_size) if indices is None else indices[i : i + batch_size]
        # a writable copy of just this batch (a mapped file's rows are read-only)
        batch = np.array(images[rows])
        if isinstance(encoder, OnnxEncoder):
            emb = encoder(batch)
        else:
            x = preprocess(torch.from_numpy(batch)).contiguous(memory_format=torch.channels_last)
            del batch  # the network needs only its float input: hold one copy of the batch
            emb = to_numpy(encoder(x))
        if out is None:
            out = np.empty((n, *emb.shape[1:]), emb.dtype)
        out[i : i + len(emb)] = emb
        release = getattr(images, "release", None)  # a mapped file: unmap the rows read
        if release is not None:
            release()
    if out is None:
        return np.zeros((0, 1), np.float32)
    return out


def pair_distances(
    encoder: torch.nn.Module, images: np.ndarray, pairs: dict[str, np.ndarray]
) -> np.ndarray:
    """Distances of indexed pairs, embedding each distinct image once."""
    uniq, inv = np.unique(np.r_[pairs["a"], pairs["b"]], return_inverse=True)
    emb = embed(encoder, images, indices=uniq).astype(np.float64)
    n = len(pairs["a"])
    return embedding_distances(encoder, emb[inv[:n]], emb[inv[n:]])


@torch.no_grad()
def embedding_distances(encoder: SiameseEncoder, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise distances of embedding arrays under the encoder's metric, in float64 for stable
    metrics."""
    return encoder.pair_distance(_as_tensor(a, np.float64), _as_tensor(b, np.float64)).numpy()


def split_pair_distances(
    prepared_dir: str | Path, pairs_dir: str | Path, model_dir: str | Path, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """(distances, same) of the fixed ``split`` pairs under the trained encoder."""

    data = PreparedData(prepared_dir)
    pairs = load_pairs(pairs_path(pairs_dir, split))
    return pair_distances(load_encoder(model_dir), data.images, pairs), pairs["y"].astype(bool)
