"""Numeric verification of an artifact against eager PyTorch, in the artifact's own runtime.

The inputs are image-like (Fashion-MNIST test images when installed, otherwise smooth synthetic images), not
white noise: transformers behave differently on real structure, and so do fp16 and int8 errors.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data import fashion_mnist
from .data.transforms import smooth_images, to_model_input

# precision -> (minimum cosine similarity, minimum top-1 agreement or None when not enforced)
# Quantized artifacts get a loose sanity budget here; their real budget is accuracy on held-out data (parity).
BUDGETS = {"fp32": (0.9999, 1.0), "fp16": (0.999, None), "quantized": (0.98, None)}


def verification_inputs(cfg: dict, count: int = 8, seed: int = 0) -> tuple[np.ndarray, str]:
    """(float32 NCHW images preprocessed for the model, where they came from)."""
    _, height, width = cfg["input_size"]
    if fashion_mnist.available():
        images, _ = fashion_mnist.load("test")
        step = max(len(images) // count, 1)
        picked, source = images[::step][:count], f"Fashion-MNIST test images (every {step}th)"
    else:
        picked, source = smooth_images(count, (height, width), seed=seed), "smooth synthetic images"
    return to_model_input(picked, cfg).numpy().astype(np.float32), source


def reference_logits(model: nn.Module, images: np.ndarray, static_batch: bool = False) -> np.ndarray:
    """Eager logits; `static_batch` runs one image at a time (a PT2E-quantized graph is traced at batch 1)."""
    model.eval()
    with torch.no_grad():
        if static_batch:
            return np.concatenate([model(torch.from_numpy(image[None])).float().numpy() for image in images])
        return model(torch.from_numpy(images)).float().numpy()


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    reference, candidate = reference.astype(np.float64), candidate.astype(np.float64)
    dot = (reference * candidate).sum(axis=1)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = dot / np.maximum(norms, 1e-30)
    return {"max_abs_error": float(np.abs(reference - candidate).max()),
            "mean_abs_error": float(np.abs(reference - candidate).mean()),
            "cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean()),
            "top1_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()),
            "samples": int(len(reference))}


@dataclass
class Verdict:
    passed: bool
    failures: list[str]


def judge(metrics: dict, precision: str) -> Verdict:
    min_cosine, min_agreement = BUDGETS.get(precision, BUDGETS["quantized"])
    failures = []
    if not metrics["cosine_min"] >= min_cosine:  # also catches NaN
        failures.append(f"cosine similarity {metrics['cosine_min']:.6f} < {min_cosine} ({precision} budget)")
    if min_agreement is not None and metrics["top1_agreement"] < min_agreement:
        failures.append(f"top-1 agreement {metrics['top1_agreement']:.1%} < {min_agreement:.0%} ({precision} budget)")
    return Verdict(passed=not failures, failures=failures)
