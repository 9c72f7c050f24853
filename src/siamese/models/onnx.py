"""The trained twin as ONNX graphs, run by onnxruntime: the network outside PyTorch (a phone, an
edge box, a service in another language) and a faster CPU runtime for serving.

Two graphs are exported, so a consumer needs nothing but onnxruntime and the package's JSON:

* ``encoder.onnx``: ``images`` uint8 (N, H, W, C), exactly what decoding gives, to
  ``embedding`` float32 (N, D). The normalisation (``/127.5 - 1``) and the NHWC -> NCHW move are
  inside the graph, so they cannot be re-implemented differently outside;
* ``distance.onnx``: ``a``, ``b`` float32 (N, D) embeddings to ``distance`` float64 (N,) under
  the model's metric (euclidean, squared euclidean, cosine, or the learned head), computed in
  float64 as :func:`siamese.models.loading.embedding_distances` does.

Both come from ``torch.onnx.export`` with the dynamo exporter (the maintained one; the
TorchScript exporter is deprecated) and a dynamic batch axis. Before a graph is accepted it is run
on real images against the PyTorch model (:func:`export_onnx`): the largest absolute difference
of the embeddings, and of the end-to-end distances, must be within ``PARITY_TOLERANCE``."""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import warnings
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch import nn

from siamese.errors import OnnxExportError, OnnxParityError
from siamese.io import read_json, write_json
from siamese.models.encoders import SiameseEncoder, preprocess
from siamese.models.runtimes import RUNTIMES
from siamese.output import verbose

__all__ = ["RUNTIMES", "OnnxDistance", "OnnxEncoder", "export_onnx"]
OPSET = 18
PARITY_TOLERANCE = 1e-4  # largest absolute difference of embeddings and of distances
PARITY_IMAGES = 64  # real images the parity check runs (register takes them from the data)
ENCODER_FILE, DISTANCE_FILE, INFO_FILE = "encoder.onnx", "distance.onnx", "onnx.json"
IMAGES_INPUT, EMBEDDING_OUTPUT = "images", "embedding"
PAIR_INPUTS, DISTANCE_OUTPUT = ("a", "b"), "distance"
# the exporter's notices about itself (and about torchvision ops a Siamese encoder never uses)
_EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")


class _Images(nn.Module):
    """uint8 NHWC images -> embeddings: preprocessing and network in one graph."""

    def __init__(self, encoder: SiameseEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(preprocess(images))


class _Distance(nn.Module):
    """float32 embeddings -> float64 row-wise distances under the model's metric."""

    def __init__(self, encoder: SiameseEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.encoder.pair_distance(a.double(), b.double())


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter reports each of its passes and warns about torchvision kernels it skips and
    torch internals it calls: nothing a user can act on (``--verbose`` shows it). Its errors
    still raise."""
    if verbose():
        yield
        return
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export(module: nn.Module, args: tuple, names: tuple[list[str], list[str]], path: Path) -> None:
    batch = torch.export.Dim("batch")
    with _quiet_exporter():
        program = torch.onnx.export(
            module.eval(),
            args,
            None,
            dynamo=True,
            input_names=names[0],
            output_names=names[1],
            dynamic_shapes=tuple({0: batch} for _ in args),
            opset_version=OPSET,
            verbose=False,
            report=False,
        )
        program.save(str(path))


def _reason(err: BaseException) -> str:
    """The exporter's innermost cause (the operator it has no translation for), in one line: its
    outer errors are generic advice about filing a PyTorch issue."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:500]


def export_onnx(
    encoder: SiameseEncoder,
    dest: str | Path,
    sample: np.ndarray,
    tolerance: float = PARITY_TOLERANCE,
) -> dict:
    """Export ``encoder`` into ``dest`` (``encoder.onnx``, ``distance.onnx``, ``onnx.json``) and
    check it on ``sample`` (real uint8 (N, H, W, C) images): returns what ``onnx.json`` records
    (opset, tolerance, the measured differences, the versions). Raises ``OnnxExportError`` when
    the network cannot be exported (an operator ONNX lacks) or its outputs differ from PyTorch's
    by more than ``tolerance``, naming which and by how much (``onnx.json`` is then not
    written: the folder holds no checked export)."""
    from siamese.models.loading import embed, embedding_distances  # loading imports this module

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    sample = np.asarray(sample, np.uint8)
    if sample.ndim == 3:
        sample = sample[..., None]
    if len(sample) < 2:
        raise OnnxExportError("the ONNX parity check needs at least 2 real images")
    # a copy in the default memory format: the exported graph never depends on how the caller's
    # model is laid out in memory, and the caller's model is left as it was
    twin = copy.deepcopy(encoder).float().eval().to(memory_format=torch.contiguous_format)
    example = torch.from_numpy(sample[:2].copy())
    try:
        _export(
            _Images(twin), (example,), ([IMAGES_INPUT], [EMBEDDING_OUTPUT]), dest / ENCODER_FILE
        )
        with torch.no_grad():
            z = twin(preprocess(example))
        _export(
            _Distance(twin),
            (z, z.flip(0)),
            (list(PAIR_INPUTS), [DISTANCE_OUTPUT]),
            dest / DISTANCE_FILE,
        )
    except Exception as err:  # the exporter raises many types; all mean "not exportable"
        raise OnnxExportError(
            f"the encoder {encoder.config['encoder']!r} cannot be exported to ONNX "
            f"(opset {OPSET}): {_reason(err)}"
        ) from err
    onnx_net = OnnxEncoder(dest / ENCODER_FILE)
    reference = embed(encoder, sample)
    got = embed(onnx_net, sample)
    embedding_diff = float(np.max(np.abs(got.astype(np.float64) - reference)))
    # end to end, as a consumer of the exported folder computes it: ONNX embeddings into the
    # ONNX distance, against PyTorch's embeddings into PyTorch's distance
    other = np.roll(np.arange(len(sample)), 1)
    torch_d = embedding_distances(encoder, reference, reference[other])
    onnx_d = OnnxDistance(dest / DISTANCE_FILE)(got, got[other])
    distance_diff = float(np.max(np.abs(onnx_d - torch_d)))
    info = {
        "exported": True,
        "opset": OPSET,
        "exporter": "torch.onnx.export(dynamo=True)",
        "encoder": {"file": ENCODER_FILE, "input": IMAGES_INPUT, "output": EMBEDDING_OUTPUT},
        "distance": {"file": DISTANCE_FILE, "inputs": list(PAIR_INPUTS), "output": DISTANCE_OUTPUT},
        "metric": encoder.config["distance"],
        "input_shape": ["batch", *sample.shape[1:]],
        "input_dtype": "uint8",
        "parity": {
            "images": int(len(sample)),
            "tolerance": tolerance,
            "max_abs_embedding_diff": embedding_diff,
            "max_abs_distance_diff": distance_diff,
        },
        "versions": {name: version(name) for name in ("torch", "onnx", "onnxruntime")},
    }
    worst = max(embedding_diff, distance_diff)
    if not worst <= tolerance:  # NaN fails too
        raise OnnxParityError(
            f"the ONNX export of {encoder.config['encoder']!r} does not match PyTorch on "
            f"{len(sample)} real images: max abs difference of embeddings {embedding_diff:.3g}, "
            f"of distances {distance_diff:.3g} (tolerance {tolerance:g})"
        )
    write_json(dest / INFO_FILE, info)
    return info


def _session(path: Path, threads: int | None):
    import onnxruntime as ort  # only where an ONNX runtime is used

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its notices are about its own internals
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxEncoder:
    """``encoder.onnx`` run by onnxruntime: uint8 (N, H, W, C) images -> float32 (N, D)
    embeddings. :func:`siamese.models.loading.embed` takes it wherever it takes the PyTorch
    encoder. Intra-op threads follow torch's setting (serving sets it)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.session = _session(self.path, threads)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, np.uint8)
        if images.ndim == 3:  # (N, H, W): one channel
            images = images[..., None]
        return self.session.run([EMBEDDING_OUTPUT], {IMAGES_INPUT: images})[0]


class OnnxDistance:
    """``distance.onnx`` run by onnxruntime: two (N, D) embedding arrays -> (N,) float64."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.session = _session(Path(path), threads)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        feeds = {
            name: np.ascontiguousarray(x, np.float32)
            for name, x in zip(PAIR_INPUTS, (a, b), strict=True)
        }
        return self.session.run([DISTANCE_OUTPUT], feeds)[0]


def write_not_exported(dest: str | Path, reason: str) -> dict:
    """``onnx.json`` of a package whose encoder could not be exported: why, for whoever looks for
    the ONNX file (``siamese export`` names it)."""
    info = {"exported": False, "reason": reason, "opset": OPSET}
    Path(dest).mkdir(parents=True, exist_ok=True)
    write_json(Path(dest) / INFO_FILE, info)
    return info


def read_info(onnx_dir: str | Path | None) -> dict | None:
    """``onnx.json`` of a package's ``onnx/`` folder; None where no export was attempted."""
    if onnx_dir is None or not (Path(onnx_dir) / INFO_FILE).is_file():
        return None
    return read_json(Path(onnx_dir) / INFO_FILE)


def exported(onnx_dir: str | Path | None) -> bool:
    """Whether ``onnx_dir`` holds a checked export (``onnx.json`` is written after the check)."""
    info = read_info(onnx_dir)
    return bool(info and info.get("exported")) and (Path(onnx_dir) / ENCODER_FILE).is_file()
