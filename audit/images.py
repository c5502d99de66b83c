"""Images as the user sees them: 8-bit RGB, turned the way their EXIF orientation says (as viewers
and the FiftyOne App show them), and large JPEGs decoded at reduced size."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class UnreadableImage(Exception):
    """An image file that cannot be decoded, for a reason PIL does not name well (an empty file)."""


def unreadable_reason(error: Exception) -> str:
    """Why an image could not be read, in one short line (stored on its sample)."""
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]


def open_rgb(filepath: str | os.PathLike, min_side: int | None = None) -> Image.Image:
    """The image at ``filepath`` as 8-bit RGB, in the orientation its EXIF tag asks for.

    With ``min_side``, a JPEG is decoded at the strongest reduction (1/2, 1/4 or 1/8, PIL's draft
    mode) that keeps both sides at least that long: a 12,000 x 9,000 photo then costs about 5 MB
    instead of 320 MB, and PIL's size warning is silenced (PIL still refuses an image of more than
    twice its ``MAX_IMAGE_PIXELS``: such a file is reported as unreadable, with PIL's reason).
    See `to_rgb` for the colour modes. Raises on an unreadable file."""
    if os.path.getsize(filepath) == 0:
        raise UnreadableImage("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(filepath) as image:
            if min_side:
                image.draft("RGB", (min_side, min_side))
            return to_rgb(ImageOps.exif_transpose(image))


# torchvision's InterpolationMode names -> PIL's resampling filters (as torchvision maps them).
RESAMPLING = {"nearest": Image.Resampling.NEAREST, "nearest-exact": Image.Resampling.NEAREST,
              "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
              "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING, "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class PixelRecipe:
    """A model's input as 8-bit pixels: the shorter side resized to ``resize_short`` with
    ``interpolation`` (torchvision's name), then the center ``crop`` square. PIL and NumPy alone, so
    that a decoding process need not import torch (`audit.scan.ray_tasks`)."""

    resize_short: int
    crop: int
    interpolation: str = "bicubic"

    def pixels(self, image: Image.Image) -> np.ndarray:
        """An RGB PIL image -> (3, crop, crop) uint8: torchvision's ``resize`` + ``center_crop`` of
        a PIL image to the pixel (black padding where the image is smaller than the crop)."""
        width, height = image.size
        short, crop = self.resize_short, self.crop
        size = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
        if size != image.size:
            image = image.resize(size, resample=RESAMPLING[self.interpolation])
        left, top = (-((crop - side) // 2) if crop > side else int(round((side - crop) / 2.0)) for side in image.size)
        return np.ascontiguousarray(np.asarray(image.crop((left, top, left + crop, top + crop))).transpose(2, 0, 1))


def to_rgb(image: Image.Image) -> Image.Image:
    """An image of any PIL mode as 8-bit RGB. 16-bit grayscale is scaled from 0..65535 (a plain
    conversion would clip it to white), 32-bit integer and float images by their range (0..1,
    0..255, 0..65535 or their maximum); alpha is dropped, the colour under it kept, as torchvision's
    loaders do; CMYK, palette and grayscale images convert as PIL converts them."""
    if image.mode in _SIXTEEN_BIT or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = float(values.max()) if values.size else 0.0
        if image.mode in _SIXTEEN_BIT:
            top = 65535.0
        elif image.mode == "F" and peak <= 1.0:
            top = 1.0
        else:
            top = next((t for t in (255.0, 65535.0) if peak <= t), peak)
        gray = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        image = Image.fromarray(gray, "L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when such a palette goes to RGB directly
    return image if image.mode == "RGB" else image.convert("RGB")
