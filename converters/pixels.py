"""0..255 pixel inputs with the normalisation folded into the artifact (Core ML image inputs, TFLite uint8 inputs).

Camera pipelines hand an app 8-bit pixels; an artifact that takes them directly saves the app a per-pixel
`(x / 255 - mean) / std` loop and the chance of getting mean/std wrong.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import EdgevitError


class PixelInput(nn.Module):
    """0..255 pixels -> the model's normalised input, `(x / 255 - mean) / std` as one per-channel scale and shift;
    `from_uint8` casts a uint8 input to float first."""

    def __init__(self, model: nn.Module, mean, std, from_uint8: bool = False) -> None:
        super().__init__()
        self.model = model
        self.from_uint8 = from_uint8
        mean = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", -mean / std)

    def forward(self, x: torch.Tensor):
        if self.from_uint8:
            x = x.to(torch.float32)
        return self.model(x * self.scale + self.shift)


def check_normalisation(cfg: dict, channels: int, option: str) -> tuple[list, list]:
    """The model's (mean, std), or a clear error naming `option` when a pixel input cannot be built."""
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None:
        raise EdgevitError(f"{option} needs the model's normalisation: model.pretrained_cfg has no mean/std (build "
                           "the model with edgevit.create_model, or set them)")
    if len(mean) != channels or len(std) != channels:
        raise EdgevitError(f"mean/std have {len(mean)}/{len(std)} values for a {channels}-channel input")
    return list(mean), list(std)


def to_pixels(images: torch.Tensor | np.ndarray, mean, std) -> torch.Tensor | np.ndarray:
    """Normalised NCHW float images -> 0..255 float pixels (the inverse of the model's preprocessing)."""
    shape = (1, -1, 1, 1)
    if isinstance(images, torch.Tensor):
        mean_t = torch.tensor(mean, dtype=images.dtype).reshape(shape)
        std_t = torch.tensor(std, dtype=images.dtype).reshape(shape)
        return ((images * std_t + mean_t) * 255.0).clamp(0, 255)
    return np.clip((images * np.asarray(std, np.float32).reshape(shape)
                    + np.asarray(mean, np.float32).reshape(shape)) * 255.0, 0, 255)


def from_pixels(pixels: np.ndarray, mean, std) -> np.ndarray:
    """0..255 NCHW pixels -> normalised float32 images (the model's preprocessing)."""
    shape = (1, -1, 1, 1)
    return ((np.asarray(pixels, np.float32) / 255.0 - np.asarray(mean, np.float32).reshape(shape))
            / np.asarray(std, np.float32).reshape(shape)).astype(np.float32)


def as_8bit(images: np.ndarray, mean, std) -> np.ndarray:
    """The normalised images an 8-bit camera could have produced: pixels rounded to integers, normalised again.
    Eager PyTorch on these is the reference for an artifact that takes uint8 pixels."""
    return from_pixels(np.rint(to_pixels(np.asarray(images, np.float32), mean, std)), mean, std)
