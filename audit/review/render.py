"""Pictures of what the audit saw: the image with its Eigen-CAM map and boxes drawn over it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from audit.boxformat import to_corners
from audit.images import open_rgb

BOX_COLOURS = {"eigencam": (255, 255, 255), "ground_truth": (0, 220, 0)}
# Smaller images (CIFAR's 32 pixels) are drawn enlarged to this side, so that a box's outline does not cover them.
MIN_SIDE = 160


def overlay(filepath: str, heatmap: str | np.ndarray | None, boxes: dict[str, list[list[float]]],
            max_side: int = 320, alpha: float = 0.45) -> np.ndarray:
    """An RGB uint8 picture: the image (EXIF-rotated, at most ``max_side``, enlarged to MIN_SIDE where
    smaller), the heatmap (a PNG's path or a uint8 array in the image's frame) blended in with the JET
    colours (red = strongest), and each named group of relative [x, y, w, h] boxes."""
    image = open_rgb(filepath, max_side)
    image.thumbnail((max_side, max_side))
    if max(image.size) < MIN_SIDE:
        scale = MIN_SIDE / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    picture = np.asarray(image).copy()
    height, width = picture.shape[:2]
    if isinstance(heatmap, (str, Path)):
        heatmap = cv2.imread(str(heatmap), cv2.IMREAD_GRAYSCALE) if Path(heatmap).is_file() else None
    if heatmap is not None:
        heat = cv2.resize(np.asarray(heatmap, np.uint8), (width, height), interpolation=cv2.INTER_LINEAR)
        coloured = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
        picture = (picture * (1 - alpha) + coloured * alpha).astype(np.uint8)
    for group, group_boxes in boxes.items():
        colour = BOX_COLOURS.get(group, (255, 200, 0))
        for box in group_boxes:
            x1, y1, x2, y2 = to_corners(box, width, height)
            top_left, bottom_right = (int(round(x1)), int(round(y1))), (int(round(x2)) - 1, int(round(y2)) - 1)
            cv2.rectangle(picture, top_left, bottom_right, (0, 0, 0), 4)
            cv2.rectangle(picture, top_left, bottom_right, colour, 2)
    return picture

