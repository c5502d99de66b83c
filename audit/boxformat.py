"""Box formats, converted in one place: (x1, y1, x2, y2) corners in pixels (OpenCV, IoU, VOC files)
and FiftyOne's relative [x, y, width, height] in 0..1 (what the dataset stores)."""

from __future__ import annotations

Box = tuple[float, float, float, float]


def to_relative(box: Box, width: float, height: float) -> list[float]:
    """An (x1, y1, x2, y2) box in pixels of a width x height frame as FiftyOne's relative [x, y, w, h]."""
    x1, y1, x2, y2 = box
    return [x1 / width, y1 / height, (x2 - x1) / width, (y2 - y1) / height]


def to_corners(relative: list[float], width: float = 1.0, height: float = 1.0) -> Box:
    """A relative [x, y, w, h] box as (x1, y1, x2, y2) in a width x height frame (relative again by default)."""
    x, y, w, h = relative
    return (x * width, y * height, (x + w) * width, (y + h) * height)
