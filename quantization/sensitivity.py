"""Which Linear/Conv layers int8 hurts most: quantize one layer at a time and measure the output SNR.

`edgevit parity` prints the worst layers when an accuracy budget breaks and, with `--max-drop`, keeps the most
sensitive ones float. This stays in PyTorch (no conversion per layer, which would take minutes each): one export,
then per layer a copy of the graph, prepare with only that layer annotated, calibrate, convert, run. Calibration
and scoring each use one batch (the export has a static batch), so a few dozen images keep it to seconds.
"""
from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import torch
import torch.nn as nn

from edgevit.errors import EdgevitError

from .islands import _clean, module_path, quantizable
from .pt2e import exported_graph, with_float_islands
from .recipes import GRAPH_QUANTIZERS, RECIPES, get_recipe

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
    from .qat import QAT_RECIPE

    if recipe == QAT_RECIPE:  # learned ranges: post-training sensitivity still says which layers are fragile
        return DEFAULT_PROXY, "QAT model: ranked by post-training XNNPACK int8 sensitivity"
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


def _remap(value, nodes: dict):
    """An annotation of one graph, its Node references swapped for the same-named nodes of a copy."""
    if isinstance(value, torch.fx.Node):
        return nodes[value.name]
    if isinstance(value, (list, tuple)):
        return type(value)(_remap(item, nodes) for item in value)
    if isinstance(value, dict):
        return {_remap(key, nodes): _remap(item, nodes) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _remap(getattr(value, f.name), nodes)
                                             for f in dataclasses.fields(value) if f.init})
    return value


def _replaying(quantizer, annotations: dict):
    """A quantizer that sets the given annotations (by node name) instead of annotating: a backend's annotate
    pass traces its pattern graphs every time (seconds), the same work for every layer."""
    from torchao.quantization.pt2e.quantizer import Quantizer

    class Replay(Quantizer):
        def transform_for_annotation(self, model):
            return quantizer.transform_for_annotation(model)

        def annotate(self, model):
            nodes = {node.name: node for node in model.graph.nodes}
            for name, annotation in annotations.items():
                nodes[name].meta["quantization_annotation"] = _remap(annotation, nodes)
            return model

        def validate(self, model):
            pass

    return Replay()


def layer_sensitivity(model: nn.Module, example: torch.Tensor, target: str, recipe: str, calibration, images,
                      float_modules=()) -> list[tuple[str, float]]:
    """(module name, output SNR in dB with only that module in int8) for every quantizable layer, worst first.

    The layers are those `quantizable()` accepts and the quantizer annotates; for artifact-stage recipes only
    nn.Linear/nn.Conv2d modules (the artifact tools match those by weight). `calibration` (train-split inputs) and
    `images` (held-out inputs) are used as one batch each, of the smaller of their sizes; `example` fixes the
    input shape. The model is put in the target's LayerNorm form, as conversion does. Modules in `float_modules`
    are left out.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgevit.converters import get_target, target_forms

    key, _ = graph_quantizer(target, recipe)
    count = min(len(calibration), len(images))
    calibration, images = _batch(calibration, count), _batch(images, count)
    if tuple(images.shape[1:]) != tuple(example.shape[1:]):
        raise EdgevitError(f"sensitivity images are {tuple(images.shape[1:])}, the model takes "
                           f"{tuple(example.shape[1:])}")
    model = model.eval()
    artifact_stage = (target, recipe) in RECIPES and RECIPES[target, recipe].stage == "artifact"
    modules = dict(model.named_modules())
    ranking = []
    with target_forms(model, get_target(target)), torch.no_grad():
        reference = model(images).numpy()
        graph = exported_graph(model, images, key[0])  # the graph the recipe quantizes, rewrites included
        # annotate once; every layer then replays its own nodes' annotations on a fresh copy of the graph
        quantizer = with_float_islands(GRAPH_QUANTIZERS[key](), quantizable(float_modules))
        template = quantizer.annotate(quantizer.transform_for_annotation(copy.deepcopy(graph)))
        by_layer: dict[str, dict] = {}
        for node in template.graph.nodes:
            if "quantization_annotation" in node.meta:
                by_layer.setdefault(owner(node), {})[node.name] = node.meta["quantization_annotation"]
        for name, layer_annotations in by_layer.items():
            if artifact_stage and not isinstance(modules.get(name), (nn.Linear, nn.Conv2d)):
                continue
            prepared = prepare_pt2e(copy.deepcopy(graph), _replaying(quantizer, layer_annotations))
            prepared(calibration)
            ranking.append((name, snr_db(reference, convert_pt2e(prepared)(images).numpy())))
    return sorted(ranking, key=lambda item: item[1])
