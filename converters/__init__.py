"""edgevit.converters: one module per target, each with the same small interface.

Every target module (`executorch`, `coreml`, `tflite`, `onnx`) exposes:

- `NAME`, `ARTIFACT` (file or directory name inside a bundle), `PRECISIONS`, `LAYER_NORM` and `CONV` (the forms
  of edgevit's LayerNorm and Conv2d its backend runs best: "matmul" LayerNorm and "gemm" convs for XNNPACK,
  "native" where the backend has a fast LayerNorm / convolution; `target_forms` applies them),
  `RUNS_HERE` (whether this machine has the runtime);
- `convert(model, example, artifact, precision="fp32", **options) -> dict`: write the artifact, return a report
  (inputs, outputs, op census, delegation);
- `load(artifact, threads=None) -> predict`: the artifact loaded once in its own runtime; `predict(image)` maps one
  (C, H, W) float32 image to its logits (what verification and benchmarks call in a loop);
- `run(artifact, images) -> np.ndarray`: `load` + `predict` over NCHW float images (N, C, H, W) -> (N, classes);
- `inspect(artifact) -> dict`: what the artifact contains, without running it;
- `toolchain_versions() -> dict`.

Modules are imported on first use, so a missing toolchain only breaks its own target.
"""
from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

from ..errors import EdgevitError

TARGETS = ("executorch", "coreml", "tflite", "onnx")


class RuntimeUnavailable(EdgevitError):
    """The artifact was built, but its runtime does not exist on this machine (Core ML off macOS)."""

_EXTRAS = {"executorch": "executorch", "coreml": "coreml", "tflite": "tflite", "onnx": "onnx"}


def predict_all(predict, images) -> np.ndarray:
    """Stack one predictor's logits over a batch of (N, C, H, W) images (artifacts are static batch 1)."""
    return np.stack([np.asarray(predict(image), dtype=np.float32).reshape(-1) for image in images])


def backend_summary(report: dict) -> str:
    """One phrase on how the artifact maps onto its backend, from a target's convert or inspect report."""
    if "delegation" in report:
        delegation = report["delegation"]
        phrase = (f"{delegation['partitions']} XNNPACK partition(s), {delegation['undelegated_compute_ops']} "
                  "undelegated ops")
        outside = ", ".join(f"{op} x{count}" for op, count in delegation["undelegated_ops"].items())
        return phrase + (f" ({outside})" if outside else "")
    if "fully_accelerated" in report:
        return "fully accelerated (XNNPACK)" if report["fully_accelerated"] else "NOT fully accelerated"
    if "tensorrt" in report:
        return report["tensorrt"]["verdict"]
    if "max_rank" in report:
        return f"max rank {report['max_rank']}, {sum(report.get('ops', {}).values())} MIL ops"
    return ""


def _check_name(name: str) -> None:
    if name not in TARGETS:
        raise EdgevitError(f"unknown target '{name}'; choose one of: {', '.join(TARGETS)} (or 'all')")


def get_target(name: str) -> ModuleType:
    """The converter module of a target, with a clear error if the name or its toolchain is missing."""
    _check_name(name)
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError as exc:
        raise EdgevitError(f"the {name} target needs its toolchain, which failed to import ({exc}). "
                           f"Install it with: pip install 'edgevit[{_EXTRAS[name]}]'") from None


def forms_of(target: ModuleType) -> dict[str, str]:
    """The forms of edgevit's dual-form layers that `target` exports, as `edgevit.models.export_forms` takes them."""
    return {"layer_norm": target.LAYER_NORM, "conv": target.CONV}


def target_forms(model, target: ModuleType):
    """Context: `model`'s LayerNorms and convs in the forms `target` exports."""
    from edgevit.models import export_forms

    return export_forms(model, **forms_of(target))


def resolve_targets(names: str | list[str]) -> list[str]:
    """Target names from user input ('all' expands to every target), validated."""
    requested = [names] if isinstance(names, str) else list(names)
    if "all" in requested:
        return list(TARGETS)
    for name in requested:
        _check_name(name)
    return list(dict.fromkeys(requested))
