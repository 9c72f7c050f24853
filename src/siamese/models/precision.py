"""Numerics across training precisions: under Lightning's ``16-mixed``/``bf16-mixed`` (autocast)
or ``16-true``/``bf16-true`` an encoder returns float16 or bfloat16 embeddings. Whatever reads
them computes in at least float32: the losses (exponentials, squared distances and their sums
overflow or lose every digit in 16 bits), the validation metrics, and every conversion to numpy
(which has no bfloat16). ``64-true`` embeddings stay float64."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float32 when it is a 16-bit float (differentiable: gradients flow back in the
    tensor's own dtype), else unchanged."""
    return t.float() if t.dtype in LOW_PRECISION else t


@contextlib.contextmanager
def autocast_off(t: torch.Tensor) -> Iterator[None]:
    """No autocast inside the block (on ``t``'s device): under mixed precision autocast would
    run matrix products and reductions in 16 bits again, whatever the input's dtype."""
    with torch.autocast(t.device.type, enabled=False):
        yield


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor of any float dtype as a numpy array (float32 for 16-bit floats): the one
    conversion every embedding and distance takes on its way out of torch."""
    return full_precision(t.detach().cpu()).numpy()
