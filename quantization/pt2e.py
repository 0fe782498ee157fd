"""PT2E quantization of an edgevit model (torchao flow), shared by every backend's quantizer.

export -> prepare (observers where the backend quantizer annotates, minus the float islands) -> calibrate ->
convert. The result is a `QuantizedModel`: an nn.Module the converters take like any float model.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn

from edgevit.errors import EdgevitError
from edgevit.progress import progress_bar

from .islands import feeds_a_concatenation, hands_float_to_concatenations, quantizable

CARRIED_ATTRIBUTES = ("variant", "family", "arch", "pretrained_cfg", "default_cfg", "weights_source", "load_report")


class QuantizedModel(nn.Module):
    """A converted PT2E graph with the float model's identity (variant, cfg, weights) for bundles and reports."""

    def __init__(self, graph: torch.fx.GraphModule, float_model: nn.Module, recipe: str) -> None:
        super().__init__()
        from torchao.quantization.pt2e import allow_exported_model_train_eval

        self.graph_module = allow_exported_model_train_eval(graph)  # converters call .eval()
        for name in CARRIED_ATTRIBUTES:
            if hasattr(float_model, name):
                setattr(self, name, getattr(float_model, name))
        self.recipe = recipe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph_module(x)


def with_float_islands(quantizer, accept: Callable):
    """The backend's PT2E quantizer, minus whatever it annotated inside a float island or a module kept float."""
    from torchao.quantization.pt2e.quantizer import Quantizer

    float_into_concat = hands_float_to_concatenations(quantizer)

    class FloatIslands(Quantizer):
        def transform_for_annotation(self, model):
            return quantizer.transform_for_annotation(model)

        def annotate(self, model):
            model = quantizer.annotate(model)
            for node in model.graph.nodes:
                if not accept(node):
                    node.meta.pop("quantization_annotation", None)
                elif float_into_concat and "quantization_annotation" in node.meta and feeds_a_concatenation(node):
                    node.meta["quantization_annotation"].output_qspec = None
            return model

        def validate(self, model):
            return quantizer.validate(model)

    return FloatIslands()


def _fold_layer_norm_affine(program: torch.export.ExportedProgram, trainable: bool) -> dict:
    from edgevit.converters.executorch_folding import fold_layer_norm_affine, fold_layer_norm_affine_as_ops

    fold = fold_layer_norm_affine_as_ops if trainable else fold_layer_norm_affine
    return {"folded_layer_norm_affines": fold(program)}


# Exact rewrites of the float graph a converter makes before lowering, made before quantization instead where the
# quantize/dequantize pairs PT2E inserts would hide their pattern from the converter. XNNPACK: the LayerNorm's
# `y * g + b` folded into the Linears that read it; in an int8 graph the q/dq between them kept 61 of TNT-Ti's
# LayerNorm affines as two elementwise passes each (1.2 of 23 ms on one thread). The Linears then quantize the
# normalised input and weights scaled by the gain per input feature, not the same values in another order.
# `trainable` (QAT): the folded constants are computed in the graph from the parameters, which go on training.
EXACT_REWRITES = {"executorch": _fold_layer_norm_affine}


def exported_graph(model: nn.Module, example: torch.Tensor, target: str | None = None,
                   trainable: bool = False) -> torch.fx.GraphModule:
    """The graph PT2E quantizes: `model` exported (non-strict, for speed) in its current mode, with `target`'s
    exact rewrites (what they did in the graph's meta["rewrites"], for the manifest). The graph shares its
    parameters with `model`."""
    program = torch.export.export(model, (example,), strict=False)
    rewrites = EXACT_REWRITES[target](program, trainable) if target in EXACT_REWRITES else {}
    graph = program.module()
    graph.meta["rewrites"] = rewrites
    return graph


def calibrated(model: nn.Module, example: torch.Tensor, quantizer, calibration: Iterable[torch.Tensor] | None,
               recipe: str, float_modules: Iterable[str] = (), fold_quantize: bool = True,
               target: str | None = None) -> QuantizedModel:
    """Post-training quantization: `calibration` is an iterable of (1, C, H, W) inputs (None for dynamic);
    `target` names the converter the result goes to, whose exact graph rewrites come first."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model = model.eval()
    try:
        with torch.no_grad():
            graph = exported_graph(model, example, target)
            rewrites = graph.meta["rewrites"]
            prepared = prepare_pt2e(graph, with_float_islands(quantizer, quantizable(float_modules)))
            samples = list(calibration) if calibration is not None else [example]
            with progress_bar(total=len(samples), desc="calibrate", unit="image") as bar:
                for sample in samples:
                    prepared(sample)
                    bar.update(1)
            converted = convert_pt2e(prepared, fold_quantize=fold_quantize)
    except EdgevitError:
        raise
    except Exception as exc:
        raise EdgevitError(f"quantization ({recipe}) failed while preparing or calibrating the graph: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    quantized = QuantizedModel(converted, model, recipe)
    quantized.rewrites = rewrites
    return quantized


def quantized_linear_count(model: QuantizedModel) -> dict[str, int]:
    """How many linears/convs got int8 weights, and how many stayed float (the islands, made visible)."""
    graph = model.graph_module.graph
    quantized = {"linear": 0, "conv": 0}
    floating = {"linear": 0, "conv": 0}
    for node in graph.nodes:
        kind = "linear" if "linear" in str(node.target) else "conv" if "conv" in str(node.target) else None
        if node.op != "call_function" or kind is None:
            continue
        weight = node.args[1] if len(node.args) > 1 else None
        is_int8 = getattr(weight, "op", None) == "call_function" and "dequantize" in str(weight.target)
        (quantized if is_int8 else floating)[kind] += 1
    return {"int8_linear": quantized["linear"], "int8_conv": quantized["conv"],
            "float_linear": floating["linear"], "float_conv": floating["conv"], **getattr(model, "rewrites", {})}
