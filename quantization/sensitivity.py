"""Which Linear/Conv layers int8 hurts most: quantize one layer at a time and measure the output SNR.

`edgevit parity` prints the worst layers when an accuracy budget breaks and, with `--max-drop`, keeps the most
sensitive ones float. This stays in PyTorch (no conversion per layer, which would take minutes each): one export,
then per layer a copy of the graph, prepare with only that layer annotated, calibrate, convert, run. Calibration
and scoring each use one batch (the export has a static batch), so a few dozen images keep it to seconds.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn as nn

from edgevit.errors import EdgevitError
from edgevit.models import layer_norm_form

from .islands import _clean, module_path, quantizable
from .pt2e import with_float_islands
from .recipes import GRAPH_QUANTIZERS, get_recipe

# Artifact-stage recipes (ONNX Runtime, coremltools) have no PyTorch quantizer: XNNPACK's PT2E quantizer, with
# the same per-channel symmetric int8 weights, stands in for them.
PROXY = {"dynamic-int8": ("executorch", "dynamic-int8")}
DEFAULT_PROXY = ("executorch", "int8")


def snr_db(reference, candidate) -> float:
    """Signal-to-noise ratio of `candidate` against `reference` in dB over all values (inf when identical)."""
    reference = np.asarray(reference, dtype=np.float64)
    noise = float(((reference - np.asarray(candidate, dtype=np.float64)) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((reference ** 2).sum()) / noise)


def graph_quantizer(target: str, recipe: str) -> tuple[tuple[str, str], str | None]:
    """The GRAPH_QUANTIZERS key that measures (target, recipe), and a note when it is a proxy."""
    get_recipe(target, recipe)  # an unknown recipe fails here, with the target's offer
    if (target, recipe) in GRAPH_QUANTIZERS:
        return (target, recipe), None
    proxy = PROXY.get(recipe, DEFAULT_PROXY)
    return proxy, (f"{target} {recipe} quantizes the converted artifact; its layer sensitivity is measured with "
                   f"the XNNPACK {proxy[1]} PT2E quantizer as a proxy")


def owner(node) -> str | None:
    """The innermost module a graph node was traced in, by its `named_modules` name."""
    path = module_path(node)
    return _clean(path[-1][0]) if path else None


def quantizable_layers(graph: torch.fx.GraphModule, float_modules=()) -> list[str]:
    """Names of the modules whose Linear/Conv ops `quantizable()` would send to int8, in graph order."""
    accept = quantizable(float_modules)
    return list(dict.fromkeys(owner(node) for node in graph.graph.nodes if accept(node)))


def _batch(images, count: int) -> torch.Tensor:
    images = [torch.as_tensor(np.asarray(image, dtype=np.float32)) for image in images]
    batch = torch.cat([image if image.dim() == 4 else image[None] for image in images])
    return batch[:count]


def layer_sensitivity(model: nn.Module, example: torch.Tensor, target: str, recipe: str, calibration, images,
                      float_modules=()) -> list[tuple[str, float]]:
    """(module name, output SNR in dB with only that module in int8) for every quantizable layer, worst first.

    `calibration` (train-split inputs, (1, C, H, W) each or a batch) and `images` (held-out inputs) are used as one
    batch each, of the smaller of their sizes; `example` fixes the input shape. The model is put in the target's
    LayerNorm form, as conversion does. Modules in `float_modules` are left out.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgevit.converters import get_target

    key, _ = graph_quantizer(target, recipe)
    count = min(len(calibration), len(images))
    calibration, images = _batch(calibration, count), _batch(images, count)
    if tuple(images.shape[1:]) != tuple(example.shape[1:]):
        raise EdgevitError(f"sensitivity images are {tuple(images.shape[1:])}, the model takes {tuple(example.shape[1:])}")
    model = model.eval()
    ranking = []
    with layer_norm_form(model, get_target(target).LAYER_NORM), torch.no_grad():
        reference = model(images).numpy()
        graph = torch.export.export(model, (images,), strict=False).module()
        accept = quantizable(float_modules)
        for name in quantizable_layers(graph, float_modules):
            only = with_float_islands(GRAPH_QUANTIZERS[key](),
                                      lambda node, name=name: accept(node) and owner(node) == name)
            prepared = prepare_pt2e(copy.deepcopy(graph), only)
            prepared(calibration)
            ranking.append((name, snr_db(reference, convert_pt2e(prepared)(images).numpy())))
    return sorted(ranking, key=lambda item: item[1])
