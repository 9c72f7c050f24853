"""model.pretrained: weights trained elsewhere loaded into the encoder's backbone before
training. The file is a state dict, never arbitrary objects: safetensors (``.safetensors``), or
a torch file read with ``torch.load(weights_only=True)``. Its keys are the encoder network's
(``net.state_dict()``; a siamese ``model.pt`` works too: its ``net.`` tensors are taken).

The projection (``head``) may be absent or of another embedding size: it is then left as
initialised. Any other key the network has and the file lacks (missing), the file has and the
network lacks (unexpected), or of another shape (mismatched), fails naming the keys; with
model.pretrained_strict false they are left out and reported in one log line instead."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from siamese.errors import ParamsError
from siamese.models.encoders import projection_of

log = logging.getLogger(__name__)
SIAMESE_PREFIX = "net."  # the encoder network's keys inside a siamese model.pt
_SHOWN = 8  # keys named per kind in a message


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors or torch state-dict file; a ParamsError naming
    model.pretrained for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"model.pretrained: {path} does not exist or is not a file")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ParamsError(
            f"model.pretrained: {path} is not a state dict this can read (safetensors, or a "
            f"torch.save of a dict of tensors loadable with weights_only=True): {first}"
        ) from None
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise ParamsError(
            f"model.pretrained: {path} holds a {type(state).__name__}, not a state dict (a "
            "mapping of parameter names to tensors, e.g. torch.save(net.state_dict(), path))"
        )
    if any(k.startswith(SIAMESE_PREFIX) for k in state):
        state = {
            k.removeprefix(SIAMESE_PREFIX): v
            for k, v in state.items()
            if k.startswith(SIAMESE_PREFIX)
        }
    return state


def _names(keys: list[str]) -> str:
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def load_pretrained(net: nn.Module, path: str | Path, strict: bool = True) -> dict:
    """Load ``path`` into ``net`` (the encoder network); what was loaded and left out."""
    state = read_state_dict(path)
    own = net.state_dict()
    head = projection_of(net)
    head_keys = set()
    if head is not None:
        prefix = next(name for name, m in net.named_modules() if m is head)
        head_keys = {f"{prefix}.{k}" for k in head.state_dict()}
    missing = sorted(k for k in own if k not in state and k not in head_keys)
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(
        k for k in state if k in own and k not in head_keys and state[k].shape != own[k].shape
    )
    head_skipped = sorted(k for k in state if k in head_keys and state[k].shape != own[k].shape)
    problems = [
        f"{what}: {_names(keys)}"
        for what, keys in (
            ("missing from the file", missing),
            ("unexpected (not in the encoder)", unexpected),
            ("of another shape", mismatched),
        )
        if keys
    ]
    if problems and strict:
        raise ParamsError(
            f"model.pretrained: {path} does not fit encoder {type(net).__name__}: "
            + "; ".join(problems)
            + " (model.pretrained_strict: false loads the keys that fit and reports the rest)"
        )
    loadable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    net.load_state_dict(loadable, strict=False)
    report = {
        "loaded": len(loadable),
        "missing": missing,
        "unexpected": unexpected,
        "mismatched": mismatched + head_skipped,
    }
    left_out = "; ".join(problems) if problems else "nothing left out"
    log.info(
        "model.pretrained: loaded %d tensors from %s%s; %s",
        len(loadable),
        path,
        " (projection left as initialised)"
        if not any(k in state for k in head_keys) or head_skipped
        else "",
        left_out,
    )
    return report
