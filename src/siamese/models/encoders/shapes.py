"""Image sizes as every encoder takes them: one side S (square) or (height, width)."""

from __future__ import annotations

Size = int | tuple[int, int] | list[int]  # image_size: S (square) or (H, W)


def sides(image_size: Size) -> tuple[int, int]:
    """(height, width) of ``image_size``."""
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)
