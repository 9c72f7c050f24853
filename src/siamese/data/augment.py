"""Albumentations pipelines declared in params.yaml as a list of {name, params} steps, or as the
name of a preset (``augment: koch``)."""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import get_worker_info


class Step(NamedTuple):
    name: str
    params: dict[str, Any]


_BORDER_REPLICATE = 1  # cv2.BORDER_REPLICATE: extend the background, whether black or white
# Koch, Zemel & Salakhutdinov (2015), "Siamese Neural Networks for One-shot Image Recognition",
# section 4.2: rotation in [-10, 10] degrees, shear coefficients in [-0.3, 0.3] (the shear angle
# whose tangent is 0.3: 16.7 degrees, as albumentations takes degrees), scale in [0.8, 1.2] and
# translation in [-2, 2] pixels, each per axis; each of the four components is applied with
# probability 0.5.
_KOCH_SHEAR = math.degrees(math.atan(0.3))
PRESETS: dict[str, list[Step]] = {
    "none": [],
    "koch": [
        Step("Affine", {"rotate": (-10.0, 10.0), "border_mode": _BORDER_REPLICATE, "p": 0.5}),
        Step(
            "Affine",
            {
                "shear": {"x": (-_KOCH_SHEAR, _KOCH_SHEAR), "y": (-_KOCH_SHEAR, _KOCH_SHEAR)},
                "border_mode": _BORDER_REPLICATE,
                "p": 0.5,
            },
        ),
        Step(
            "Affine",
            {
                "scale": {"x": (0.8, 1.2), "y": (0.8, 1.2)},
                "keep_ratio": False,
                "border_mode": _BORDER_REPLICATE,
                "p": 0.5,
            },
        ),
        Step(
            "Affine",
            {
                "translate_px": {"x": (-2, 2), "y": (-2, 2)},
                "border_mode": _BORDER_REPLICATE,
                "p": 0.5,
            },
        ),
    ],
}


def resolve_steps(augment: list | str) -> list:
    """The steps of ``augment``: a list of steps as given, or a preset's steps by name."""
    if isinstance(augment, str):
        if augment not in PRESETS:
            raise ValueError(
                f"unknown augment preset {augment!r}; allowed: {', '.join(PRESETS)} "
                "or a list of {name, params} steps"
            )
        return PRESETS[augment]
    return list(augment)


def _transform_class(name: str) -> Any:
    import albumentations as A  # lazy: slow to import (~2.5 s), only training needs it

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


def check_image_shape(steps: list, shape: tuple[int, int, int]) -> None:
    """Apply every step (forced on: p = 1) once to an image of ``shape`` (H, W, C): a step that
    fails on these channels or changes the shape (ToGray to one channel, a crop to another size)
    fails at validation time, naming the step, instead of a batch minutes into training."""
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    for i, step in enumerate(steps):
        cls = _transform_class(step.name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = cls(**{**step.params, "p": 1.0})(image=image)["image"]
        except Exception as err:
            raise ValueError(
                f"augment[{i}] ({step.name}) fails on {shape[0]} x {shape[1]} images with "
                f"{shape[2]} channel(s) (data.image_size, data.channels): {err}"
            ) from None
        if out.shape != image.shape:
            raise ValueError(
                f"augment[{i}] ({step.name}) turns a {shape} (H, W, C) image into {out.shape}; "
                "augmentation must keep data.image_size and data.channels"
            )


def build_augment(steps: list | str, seed: int) -> Any | None:
    steps = resolve_steps(steps)
    if not steps:
        return None
    import albumentations as A  # lazy: slow to import (~2.5 s), only training needs it

    return A.Compose([_transform_class(s.name)(**s.params) for s in steps], seed=seed)


def apply_augment(transform: Any | None, image: np.ndarray) -> np.ndarray:
    if transform is None:
        return image
    return transform(image=image)["image"]


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: give each worker its own augmentation stream (torch seeds each
    worker differently, and deterministically once the main process is seeded); without it every
    worker would replay the same augmentations."""

    info = get_worker_info()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    transform = getattr(info.dataset, "transform", None) if info else None
    if transform is not None:
        transform.set_random_seed(seed)
