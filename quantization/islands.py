"""Float islands: the parts of a transformer that stay float whatever the recipe.

LayerNorm statistics (native, or the matmul-mean form XNNPACK delegates: its `linear` with the averaging vector must
never be treated as a Linear), softmax and the T2T Performer's random-feature `exp` lose too much in int8 and
gain little. Quantizers see graph nodes, not modules; `nn_module_stack` says which module a node came from.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch.nn as nn

from edgevit.models.layers import LayerNorm, OneHotUnfold, SeparableResize
from edgevit.models.t2t import FLOAT32_MODULES

# everything computed inside them. OneHotUnfold (T2T's soft split as a conv with one-hot kernels) and
# SeparableResize (CrossViT's resize as matmuls) only move pixels: int8 there loses precision and saves nothing
# (parity measured T2T's soft split as the most sensitive layer when quantized)
ALWAYS_FLOAT_TYPES = (LayerNorm, nn.LayerNorm, nn.Softmax, OneHotUnfold, SeparableResize)


def module_path(node) -> list[tuple[str, type | str]]:
    """(qualified name, module type) of every module enclosing a graph node, outermost first."""
    stack = node.meta.get("nn_module_stack") or {}
    return [(name, kind) for name, kind in stack.values()]


def _type_name(kind) -> str:
    return kind.__name__ if isinstance(kind, type) else str(kind).rsplit(".", 1)[-1].strip("'>")


def in_float32_module_code(node) -> bool:
    """Whether a graph node is written in the own code of a module that computes in float32 at every precision
    (`FLOAT32_MODULES`, the T2T Performer: its prm_exp runs F.linear on a random-feature buffer and exp() on the
    result), not in one of its child Linears."""
    path = module_path(node)
    return bool(path) and _type_name(path[-1][1]) in FLOAT32_MODULES


def is_always_float(node) -> bool:
    path = [_type_name(kind) for _, kind in module_path(node)]
    float_types = {t.__name__ for t in ALWAYS_FLOAT_TYPES}
    return any(name in float_types for name in path) or in_float32_module_code(node)


# the only ops that go to int8: their weights hold the bytes and their GEMMs the time. Quantizers would also
# annotate add/mul/cat (residuals, LayerNorm pieces), which costs accuracy and adds conversions for no gain.
INT8_OPS = ("aten.linear.default", "aten.conv2d.default", "aten.convolution.default", "aten.addmm.default")


def hands_float_to_concatenations(quantizer) -> bool:
    """Whether an int8 Linear/Conv feeding a cat must give it a float output, for this backend's quantizer.

    litert-torch turns a concatenation with one int8 input into an int8 CONCATENATION that quantizes every input
    with that input's scale: the patch tokens CrossViT concatenates after its int8 CLS projection were clipped to
    the CLS range (logit cosine 0.54). XNNPACK (ExecuTorch) needs the opposite: a static int8 Linear without an
    int8 output is not delegated, and its weights' dequantize has no portable kernel.

    A GELU between two int8 Linears becomes an int8 GELU too, which LiteRT's XNNPACK does not take ("not fully
    accelerated"). It is left so: its lookup table sits between the same two quantizations as XNNPACK's float GELU
    in the .pte, while a float output from the first Linear makes litert-torch store that Linear's weights float
    (measured: static int8 .tflite of tnt_ti 2x larger, speed-up over fp32 1.65x -> 1.33x).
    """
    return type(quantizer).__module__.startswith("litert_torch")


# ops that only move or reshape values: a concatenation behind them still reads the same quantized tensor
LAYOUT_OPS = ("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default", "aten.flatten.using_ints",
              "aten.permute.default", "aten.transpose.int", "aten.unsqueeze.default", "aten.squeeze.dim",
              "aten.contiguous.default", "aten.clone.default")


def feeds_a_concatenation(node) -> bool:
    """Whether `node`'s output reaches a cat directly or through layout-only ops (CrossViT's patch embedding:
    conv -> permute -> flatten -> cat with the CLS token, whose int8 CONCATENATION in litert-torch quantized the
    CLS token with the patch tokens' scale: crossvit_9_240's int8 .tflite at logit cosine 0.95 to its own graph)."""
    return any(str(user.target) == "aten.cat.default"
               or (str(user.target) in LAYOUT_OPS and feeds_a_concatenation(user)) for user in node.users)


def quantizable(float_modules: Iterable[str] = ()) -> Callable:
    """A node filter for PT2E quantizers: only Linear/Conv, never inside float islands or the named modules."""
    keep_float = tuple(name.strip(".") for name in float_modules)

    def accept(node) -> bool:
        if str(node.target) not in INT8_OPS or is_always_float(node):
            return False
        names = [_clean(name) for name, _ in module_path(node)]
        return not any(name == kept or name.startswith(kept + ".") for name in names for kept in keep_float)
    return accept


def _clean(name: str) -> str:
    """nn_module_stack names look like 'L__self___blocks_0_attn' or 'blocks.0.attn' depending on the exporter."""
    return name.removeprefix("L['self'].").removeprefix("L__self___")
