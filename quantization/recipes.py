"""Every quantization recipe edgevit offers, per target, in one table.

A recipe works at one of two stages:
- "graph": PT2E on the PyTorch graph before conversion (the backend's own quantizer, float islands kept);
- "artifact": the converted artifact is rewritten by the backend's tool (ONNX Runtime, coremltools,
  ai-edge-quantizer).
What stays float by design in every recipe: LayerNorm (both forms), softmax, GELU, attention matmuls, residual
adds and the T2T Performer's random features; only Linear and Conv weights/activations go to int8.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from edgevit.errors import EdgevitError


@dataclass(frozen=True)
class Recipe:
    name: str
    target: str
    stage: str                 # "graph" | "artifact"
    precision: str             # what the bundle is called and the manifest says: TARGET-PRECISION
    summary: str
    calibration: bool          # needs calibration images
    converter_options: dict = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.name}: {self.summary}" + (" (calibrated)" if self.calibration else "")


def _linear_and_conv(quantizer, config, conv: bool = True):
    import torch

    for op in (torch.ops.aten.linear.default, torch.ops.aten.conv2d.default)[:2 if conv else 1]:
        quantizer.set_operator_type(op, config)
    return quantizer


def xnnpack_quantizer(dynamic: bool):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)

    # Dynamic int8 convs lower, but a padded one (NesT's 3x3 block aggregation) fails at run time in XNNPACK
    # (method->execute() error 0x1): dynamic int8 keeps convs float; the Linears hold nearly all the weights.
    return _linear_and_conv(XNNPACKQuantizer(), get_symmetric_quantization_config(is_per_channel=True,
                                                                                  is_dynamic=dynamic),
                            conv=not dynamic)


def litert_quantizer(dynamic: bool):
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    # litert's quantizer annotates only through its global config; edgevit.quantization.islands keeps the
    # annotations of Linear/Conv alone
    return PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))


def litert_quant_config(dynamic: bool):
    """litert-torch's QuantConfig, which reads static-vs-dynamic from a quantizer's global config."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    return QuantConfig(pt2e_quantizer=PT2EQuantizer().set_global(config))


def coreml_quantizer():
    import torch
    from coremltools.optimize.torch.quantization.quantization_config import (
        LinearQuantizerConfig, ModuleLinearQuantizerConfig)
    from executorch.backends.apple.coreml.quantizer import CoreMLQuantizer

    return CoreMLQuantizer(LinearQuantizerConfig(global_config=ModuleLinearQuantizerConfig(
        quantization_scheme="symmetric", activation_dtype=torch.quint8, weight_dtype=torch.qint8,
        weight_per_channel=True)))


GRAPH_QUANTIZERS = {
    ("executorch", "int8"): lambda: xnnpack_quantizer(dynamic=False),
    ("executorch", "dynamic-int8"): lambda: xnnpack_quantizer(dynamic=True),
    ("tflite", "int8"): lambda: litert_quantizer(dynamic=False),
    ("coreml", "w8a8"): coreml_quantizer,
}

RECIPES = {(recipe.target, recipe.name): recipe for recipe in [
    Recipe("int8", "executorch", "graph", "int8",
           "static int8 for XNNPACK: per-channel symmetric weights, per-tensor activations", True),
    Recipe("dynamic-int8", "executorch", "graph", "dynamic-int8",
           "dynamic int8 for XNNPACK: int8 Linear weights, activations quantized per inference", False),
    Recipe("w8a8", "coreml", "graph", "w8a8",
           "int8 weights and activations (PT2E CoreMLQuantizer), iOS 17+, best on the Neural Engine", True,
           {"minimum_target": "iOS17"}),
    Recipe("int8-weights", "coreml", "artifact", "int8-weights",
           "weight-only int8 (per-channel), activations fp16", False),
    Recipe("palettize-4bit", "coreml", "artifact", "palettize-4bit",
           "4-bit k-means palettized weights (grouped channels), iOS 18+", False, {"minimum_target": "iOS18"}),
    Recipe("palettize-6bit", "coreml", "artifact", "palettize-6bit",
           "6-bit k-means palettized weights (grouped channels), iOS 18+", False, {"minimum_target": "iOS18"}),
    Recipe("int8", "tflite", "graph", "int8",
           "static int8 through litert-torch's PT2E quantizer (Linear/Conv)", True),
    Recipe("dynamic-int8", "tflite", "artifact", "dynamic-int8",
           "dynamic-range int8 (ai-edge-quantizer): per-channel int8 Linear weights, activations quantized per "
           "inference", False),
    Recipe("int8", "onnx", "artifact", "int8",
           "static int8 QDQ (symmetric, per-channel) for TensorRT's explicit quantization", True),
    Recipe("dynamic-int8", "onnx", "artifact", "dynamic-int8",
           "dynamic int8 (MatMulInteger) for ONNX Runtime on CPU", False),
]}


def recipes_for(target: str) -> list[Recipe]:
    return [recipe for (name, _), recipe in RECIPES.items() if name == target]


def get_recipe(target: str, name: str) -> Recipe:
    recipe = RECIPES.get((target, name))
    if recipe is None:
        if name == "fp16":
            raise EdgevitError(f"fp16 is a precision, not a recipe: use --precision fp16 for {target}"
                               + ("" if target != "executorch" else " (ExecuTorch/XNNPACK has no fp16 path here)"))
        offered = "; ".join(r.describe() for r in recipes_for(target))
        raise EdgevitError(f"the {target} target has no quantization recipe '{name}'. It offers: {offered}.")
    return recipe
