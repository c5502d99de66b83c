"""A model's own preprocessing: resize the shorter side, center-crop, normalise; and its geometry."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from audit.explain.geometry import Window, resize_center_crop_window
from audit.images import PixelRecipe


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize_short`` (with ``interpolation``), center-crop ``crop``
    square, scale to [0, 1] and normalise with ``mean``/``std``: the timm and torchvision recipe."""

    crop: int
    resize_short: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    @classmethod
    def from_crop_pct(cls, crop: int, crop_pct: float, mean, std, interpolation: str) -> "Preprocess":
        """timm's convention: the shorter side is resized to floor(crop / crop_pct)."""
        return cls(crop, math.floor(crop / crop_pct), tuple(mean), tuple(std), interpolation)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image -> a normalised (3, crop, crop) float tensor."""
        return self.normalise(self.pixels(image))

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """The resized, cropped model input as 8-bit pixels, (3, crop, crop) uint8: what a decoder
        sends to a model on another process or machine (a quarter of the float tensor's bytes)."""
        return torch.from_numpy(self.recipe.pixels(image))

    @property
    def recipe(self) -> PixelRecipe:
        """The resize and crop alone, for a process that decodes without torch."""
        return PixelRecipe(self.resize_short, self.crop, self.interpolation)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """8-bit pixels (..., 3, H, W) -> the model's normalised float input."""
        return F.normalize(F.to_dtype(pixels, torch.float32, scale=True), list(self.mean), list(self.std))

    def window(self, width: int, height: int) -> Window:
        """The rectangle of the original image (pixels) that the model input covers."""
        return resize_center_crop_window(width, height, self.resize_short, self.crop)

    def describe(self) -> str:
        return (f"resize {self.resize_short} {self.interpolation}, crop {self.crop}, "
                f"mean {tuple(round(m, 3) for m in self.mean)}, std {tuple(round(s, 3) for s in self.std)}")
