"""Mining across processes. Under DDP each rank embeds its own share of the global P x K batch;
gathering embeddings and labels from every rank before mining lets the miner see the global
batch, as a single process would.

Gradients: ``torch.distributed.nn.all_gather`` sums the gradient flowing into each rank's slice
over all ranks. Every rank computes the same global loss L, so a rank's local embeddings receive
W * dL/de, and DDP's gradient averaging divides by W again: parameters get exactly the gradient
of L, the same as one process over the whole batch. No extra loss scaling is needed.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_batch(emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Global (embeddings, labels) in rank order; embeddings keep their autograd graph."""
    if world_size() == 1:
        return emb, labels

    all_emb = torch.cat(all_gather(emb.contiguous()))
    parts = [torch.empty_like(labels) for _ in range(world_size())]
    dist.all_gather(parts, labels.contiguous())
    return all_emb, torch.cat(parts)
