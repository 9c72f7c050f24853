"""Load a trained encoder and embed images: shared by calibrate, evaluate, register and serving so
that every consumer computes distances the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from siamese.io import read_json
from siamese.models.encoders import SiameseEncoder, preprocess

WEIGHTS_SAFETENSORS, WEIGHTS_TORCH = "model.safetensors", "model.pt"


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
    )


def load_state_dict(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """The encoder's tensors, never arbitrary objects: ``model.safetensors`` (no pickle at all)
    when present, else ``model.pt`` through ``torch.load(weights_only=True)``."""
    model_dir = Path(model_dir)
    if (model_dir / WEIGHTS_SAFETENSORS).is_file():
        from safetensors.torch import load_file

        return load_file(model_dir / WEIGHTS_SAFETENSORS, device="cpu")
    return torch.load(model_dir / WEIGHTS_TORCH, map_location="cpu", weights_only=True)


def save_safetensors(state: dict[str, torch.Tensor], path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))


def load_encoder(model_dir: str | Path) -> SiameseEncoder:
    model_dir = Path(model_dir)
    enc = encoder_from_config(read_json(model_dir / "model.json"))
    enc.load_state_dict(load_state_dict(model_dir))
    enc.eval()
    # NHWC convolutions (oneDNN) run ~1.8x faster on CPU; every consumer (calibrate, evaluate,
    # register, serving) loads through here and embeds through embed(), so all see one numerics
    return enc.to(memory_format=torch.channels_last)


def load_registered_encoder(uri: str | Path, tracking_uri: str | None = None) -> SiameseEncoder:
    """The encoder of a logged or registered model: ``models:/NAME@alias``, ``models:/NAME/3``,
    ``runs:/RUN/model``, or a local folder (a training output with model.json, or a downloaded
    pyfunc model holding ``artifacts/encoder``). Remote URIs resolve against ``tracking_uri``
    (default: the project's, see :func:`siamese.tracking.tracking_uri`)."""
    import tempfile

    local = Path(str(uri))
    if "://" not in str(uri) and not str(uri).startswith(("models:", "runs:")):
        for candidate in (local, local / "artifacts" / "encoder"):
            if (candidate / "model.json").is_file():
                return load_encoder(candidate)
        raise FileNotFoundError(f"{uri}: neither a model URI nor a folder holding model.json")
    import mlflow

    from siamese.tracking import tracking_uri as default_tracking_uri

    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=str(uri), dst_path=tmp, tracking_uri=tracking_uri or default_tracking_uri()
        )
        return load_encoder(Path(path) / "artifacts" / "encoder")


@torch.no_grad()
def embed(encoder: torch.nn.Module, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """uint8 (N, S, S) images -> float32 (N, D) embeddings."""
    out = []
    for i in range(0, len(images), batch_size):
        x = preprocess(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])))
        x = x.contiguous(memory_format=torch.channels_last)
        out.append(encoder(x).float().numpy())
    if not out:
        return np.zeros((0, 1), np.float32)
    return np.concatenate(out)


def pair_distances(
    encoder: torch.nn.Module, images: np.ndarray, pairs: dict[str, np.ndarray]
) -> np.ndarray:
    """Distances of indexed pairs, embedding each distinct image once."""
    uniq, inv = np.unique(np.r_[pairs["a"], pairs["b"]], return_inverse=True)
    emb = embed(encoder, images[uniq]).astype(np.float64)
    n = len(pairs["a"])
    return embedding_distances(encoder, emb[inv[:n]], emb[inv[n:]])


@torch.no_grad()
def embedding_distances(encoder: SiameseEncoder, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise distances of embedding arrays under the encoder's metric, in float64 for stable
    metrics."""
    ta, tb = (
        torch.from_numpy(np.asarray(a, np.float64)),
        torch.from_numpy(np.asarray(b, np.float64)),
    )
    return encoder.pair_distance(ta, tb).numpy()


def split_pair_distances(
    prepared_dir: str | Path, pairs_dir: str | Path, model_dir: str | Path, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """(distances, same) of the fixed ``split`` pairs under the trained encoder."""
    from siamese.datamodule import load_pairs
    from siamese.stages.prepare import PreparedData

    data = PreparedData(prepared_dir)
    pairs = load_pairs(Path(pairs_dir) / f"{split}.npz")
    return pair_distances(load_encoder(model_dir), data.images, pairs), pairs["y"].astype(bool)
