"""Recipes applied to a converted artifact by the backend's own tool: ONNX Runtime, coremltools, ai-edge-quantizer."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn

from edgevit.errors import EdgevitError

from .islands import ALWAYS_FLOAT_TYPES

PALETTE_GROUP_SIZE = 16


def _fingerprint(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def may_be_int8(model: nn.Module, float_modules: Iterable[str] = ()) -> dict[str, bool]:
    """Name of every Linear/Conv module with a weight -> may it be int8 (not inside a float island, not kept
    float)?"""
    keep_float = tuple(float_modules)
    islands = [name for name, module in model.named_modules() if name and isinstance(module, ALWAYS_FLOAT_TYPES)]
    verdicts = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and getattr(module, "weight", None) is not None:
            inside_island = any(name.startswith(island + ".") for island in islands)
            kept = any(name == k or name.startswith(k + ".") for k in keep_float)
            verdicts[name] = not (inside_island or kept)
    return verdicts


def quantizable_weights(model: nn.Module, float_modules: Iterable[str] = ()) -> dict[str, bool]:
    """Fingerprint of every Linear/Conv weight (and its transpose, as exporters fold it) -> may it be int8?

    ONNX simplification renames initializers, so weights are matched by value, not by name. The Performer's
    random features are a buffer, not a Linear weight, so they never qualify.
    """
    modules = dict(model.named_modules())
    verdicts = {}
    for name, verdict in may_be_int8(model, float_modules).items():
        array = modules[name].weight.detach().float().numpy()
        for variant in (array, array.T) if array.ndim == 2 else (array,):
            verdicts[_fingerprint(variant)] = verdict
    return verdicts


def litert_locations(model: nn.Module, float_modules: Iterable[str] = ()) -> dict[str, bool]:
    """litert-torch's location of every Linear ('edgevit.models.layers.Block_0/.../torch.nn.modules.linear.
    Linear_fc1': each module on the path as its class and attribute, containers without a forward left out) ->
    may it be int8?"""
    modules = dict(model.named_modules())
    locations = {}
    for name, verdict in may_be_int8(model, float_modules).items():
        if not isinstance(modules[name], nn.Linear):
            continue
        parts = name.split(".")
        path = []
        for depth, attribute in enumerate(parts, start=1):
            module = modules[".".join(parts[:depth])]
            if not isinstance(module, (nn.ModuleList, nn.ModuleDict)):
                path.append(f"{type(module).__module__}.{type(module).__qualname__}_{attribute}")
        locations["/".join(path)] = verdict
    return locations


def tflite_ops_to_quantize(ops: list[tuple[str, np.ndarray | None]], model: nn.Module,
                           float_modules: Iterable[str] = ()) -> list[str]:
    """Of `ops` ((output name, weight) of each FULLY_CONNECTED op), the output names of those computed by a
    quantizable Linear: found by the innermost module their name locates, or by weight where the name locates none
    (the graph's output). The Performer's random features run in TokenPerformer's own code, on a buffer, and never
    qualify."""
    locations = litert_locations(model, float_modules)
    patterns = {location: re.compile(r"(^|/)" + re.escape(location) + r"(;|$)") for location in locations}
    by_weight = quantizable_weights(model, float_modules)
    chosen = []
    for name, weight in ops:
        found = [location for location, pattern in patterns.items() if pattern.search(name)]
        if found and locations[max(found, key=len)]:
            chosen.append(name)
        elif not found and weight is not None and by_weight.get(_fingerprint(weight)):
            chosen.append(name)
    return chosen


def quantize_tflite(artifact: Path, model: nn.Module, float_modules=()) -> dict:
    from edgevit.converters.tflite import fully_connected_ops, quantize_fully_connected_dynamic

    artifact = Path(artifact)
    ops = fully_connected_ops(artifact)
    chosen = tflite_ops_to_quantize(ops, model, float_modules)
    if not chosen:
        raise EdgevitError("TFLite dynamic int8 found no Linear layers to quantize in the converted graph.")
    quantize_fully_connected_dynamic(artifact, chosen)
    return {"int8_linear": len(chosen), "float_linear": len(ops) - len(chosen)}


def onnx_nodes_to_quantize(onnx_path: Path, model: nn.Module, float_modules: Iterable[str] = ()) -> list[str]:
    """MatMul/Gemm/Conv nodes whose weight is a quantizable Linear/Conv of the model (never attention, never
    the Performer's random features, never a module kept float)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    weights = {init.name: init for init in graph.initializer}
    verdicts = quantizable_weights(model, float_modules)
    chosen = []
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        names = [name for name in node.input[1:2] if name in weights]
        if names and verdicts.get(_fingerprint(numpy_helper.to_array(weights[names[0]]))):
            chosen.append(node.name)
    return chosen


def _untranspose_gemm_weights(path: Path) -> None:
    """Gemm(transB=1) with a constant B -> Gemm with B stored transposed: ORT's dynamic quantizer turns Gemm into
    MatMulInteger and drops transB, which breaks the shapes (every F.linear on 2-D input exports that way)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    weights = {init.name: init for init in model.graph.initializer}

    def trans_b(node):
        return next((a for a in node.attribute if a.name == "transB" and a.i == 1), None)
    users: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    for name, weight in weights.items():
        nodes = users.get(name, [])
        if not nodes or not all(n.op_type == "Gemm" and n.input[1] == name and trans_b(n) for n in nodes):
            continue
        weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(weight).T), name))
        for node in nodes:
            node.attribute.remove(trans_b(node))
            node.attribute.append(helper.make_attribute("transB", 0))
    onnx.save(model, str(path))


def _separate_qdq_parameters(path: Path) -> None:
    import onnx

    from edgevit.converters.onnx import separate_qdq_parameters

    model = onnx.load(str(path))
    if separate_qdq_parameters(model):
        onnx.save(model, str(path))


class _Reader:
    """ONNX Runtime's calibration data reader protocol over NCHW float images."""

    def __init__(self, input_name: str, images: Iterable[torch.Tensor]) -> None:
        self._items = iter([{input_name: image.numpy().astype(np.float32)} for image in images])

    def get_next(self):
        return next(self._items, None)

    def rewind(self):  # not needed: one calibration pass
        pass


def quantize_onnx(artifact: Path, recipe: str, model: nn.Module, calibration, float_modules=()) -> dict:
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnx

    artifact = Path(artifact)
    nodes = onnx_nodes_to_quantize(artifact, model, float_modules)
    if not nodes:
        raise EdgevitError("ONNX quantization found no Linear/Conv weights to quantize in the exported graph.")
    float_path, prepared = artifact.with_suffix(".float.onnx"), artifact.with_suffix(".pre.onnx")
    artifact.rename(float_path)
    try:
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        _untranspose_gemm_weights(prepared)
        if recipe == "int8":
            # Q/DQ on the inputs of the int8 layers only, which is what TensorRT needs: ORT also quantizes a Conv's
            # output by default, and TNT's pixel embedding (pixel tokens about to get their position embedding)
            # lost most of its precision to that symmetric per-tensor scale (tnt_ti on Fashion-MNIST: logit cosine
            # mean / min 0.985 / 0.91 on 64 test images, 0.99988 / 0.9994 without it)
            input_name = onnx.load(str(prepared)).graph.input[0].name
            quantize_static(str(prepared), str(artifact), _Reader(input_name, calibration),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "OpTypesToExcludeOutputQuantization": ["Conv"]})
            _separate_qdq_parameters(artifact)
        else:
            # per-tensor: ORT's per-channel dynamic MatMul produces wrong-shaped scales for transposed weights
            quantize_dynamic(str(prepared), str(artifact), per_channel=False, weight_type=QuantType.QInt8,
                             nodes_to_quantize=nodes)
    except Exception as exc:
        if not artifact.exists():
            float_path.rename(artifact)
        raise EdgevitError(f"ONNX Runtime quantization ({recipe}) failed: {type(exc).__name__}: {exc}") from exc
    finally:
        for path in (float_path, prepared):
            path.unlink(missing_ok=True)
    return {"quantized_nodes": len(nodes)}


def compress_coreml(artifact: Path, recipe: str) -> dict:
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    package = ct.models.MLModel(str(artifact), skip_model_load=True)
    if recipe == "int8-weights":
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel"))
        compressed = cto.linear_quantize_weights(package, config)
    else:
        bits = int(recipe.removeprefix("palettize-").removesuffix("bit"))
        config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(
            mode="kmeans", nbits=bits, granularity="per_grouped_channel", group_size=PALETTE_GROUP_SIZE))
        compressed = cto.palettize_weights(package, config)
    compressed.save(str(artifact))
    return {}


def apply(recipe, artifact: Path, model: nn.Module, calibration, float_modules=()) -> dict:
    if recipe.target == "onnx":
        return quantize_onnx(artifact, recipe.name, model, calibration, float_modules)
    if recipe.target == "coreml":
        return compress_coreml(artifact, recipe.name)
    if recipe.target == "tflite" and recipe.name == "dynamic-int8":
        return quantize_tflite(artifact, model, float_modules)
    raise EdgevitError(f"no artifact-stage quantization for {recipe.target}")
