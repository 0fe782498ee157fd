"""Preprocessing from a model's config: resize, channel count, normalisation."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

LUMA = torch.tensor([0.299, 0.587, 0.114])


def to_model_input(images: np.ndarray | torch.Tensor, cfg: dict) -> torch.Tensor:
    """uint8 images (N, H, W), (N, C, H, W) or (N, H, W, C) -> float (N, C', H', W') at the model's size, channels
    and mean/std.

    Channels-last is recognised by a last axis of 1 or 3 with a second axis that is neither. Grayscale is repeated
    to the model's channels; RGB for a one-channel model becomes luminance (ITU-R BT.601, as Pillow's "L"). The
    resize is antialiased bilinear: these inputs feed verification, calibration and small-size training, not a
    reproduction of the upstream ImageNet evaluation crop.
    """
    x = torch.as_tensor(np.array(images)).float() / 255.0  # a copy: the IDX buffer is read-only
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    channels, height, width = cfg["input_size"]
    if tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    if x.shape[1] == 3 and channels == 1:
        x = (x * LUMA.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    elif x.shape[1] != channels:
        x = x.mean(dim=1, keepdim=True).repeat(1, channels, 1, 1)
    mean = torch.tensor(cfg.get("mean", (0.5,) * channels), dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(cfg.get("std", (0.5,) * channels), dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean) / std


def smooth_images(count: int, size: tuple[int, int], channels: int = 3, seed: int = 0) -> np.ndarray:
    """Deterministic image-like uint8 images: low-frequency gradients and blobs, not white noise."""
    generator = np.random.default_rng(seed)
    height, width = size
    ys, xs = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    images = np.zeros((count, channels, height, width), dtype=np.float64)
    for n in range(count):
        for c in range(channels):
            image = generator.uniform(0.2, 0.8) + 0.3 * (generator.uniform(-1, 1) * xs + generator.uniform(-1, 1) * ys)
            for _ in range(3):
                cy, cx, radius = generator.uniform(0, 1), generator.uniform(0, 1), generator.uniform(0.05, 0.3)
                image += generator.uniform(-0.4, 0.4) * np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / radius ** 2)
            images[n, c] = image
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
