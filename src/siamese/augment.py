"""Albumentations pipelines declared in params.yaml as a list of {name, params} steps."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np


def _transform_class(name: str) -> Any:
    import albumentations as A

    cls = getattr(A, name, None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, A.BasicTransform):
        raise ValueError(f"augment step {name!r} is not an albumentations transform (e.g. Affine)")
    return cls


def check_steps(steps: list) -> None:
    """Build every step once so a typo fails at validation time, naming the step."""
    for i, step in enumerate(steps):
        cls = _transform_class(step.name)
        try:
            with warnings.catch_warnings():
                # albumentations only warns about unknown arguments; a typo must fail here
                warnings.simplefilter("error", UserWarning)
                cls(**step.params)
        except Exception as err:
            raise ValueError(f"augment[{i}] ({step.name}): invalid params: {err}") from None


def build_augment(steps: list, seed: int) -> Any | None:
    if not steps:
        return None
    import albumentations as A

    return A.Compose([_transform_class(s.name)(**s.params) for s in steps], seed=seed)


def apply_augment(transform: Any | None, image: np.ndarray) -> np.ndarray:
    if transform is None:
        return image
    return transform(image=image)["image"]


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: give each worker its own augmentation stream (torch seeds each
    worker differently, and deterministically once the main process is seeded); without it every
    worker would replay the same augmentations."""
    import torch
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    transform = getattr(info.dataset, "transform", None) if info else None
    if transform is not None:
        transform.set_random_seed(seed)
