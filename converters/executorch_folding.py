"""Fold each LayerNorm's scale and shift into the Linear that reads it, before XNNPACK lowering.

A LayerNorm ends with `y * weight + bias`: two elementwise passes over the whole activation. When only Linears
read it (every pre-norm attention and MLP), `linear(y * g + b, W, c) = linear(y, W * g, W b + c)` exactly in real
arithmetic, so the two passes become a change of constants. ExecuTorch's XNNPACK elementwise kernels are where a
.pte trails LiteRT most (7-23 % per op on an AVX-512 host, against 6 % for a GEMM). In TNT-Ti 61 of the 75
LayerNorms fold (the rest feed a reshape or a residual): 33.1 -> 32.5 ms on one thread. The model is untouched:
the new constants live in the exported program only (for QAT, `fold_layer_norm_affine_as_ops` computes them in the
graph from the parameters, which go on training).
"""
from __future__ import annotations

import torch

_aten = torch.ops.aten


def _is_call(node, target) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target is target


def _constant_and_other(program, node):
    """(the constant operand, the other operand) of a binary node, or (None, None) when neither is a constant."""
    from executorch.backends.transforms.utils import is_param_node

    left, right = node.args[:2]
    if isinstance(right, torch.fx.Node) and is_param_node(program, right):
        return right, left
    if isinstance(left, torch.fx.Node) and is_param_node(program, left):
        return left, right
    return None, None


def _foldable_affines(program):
    """Each `x * g + b` with per-feature constants g, b that only Linears read (each with a weight and bias of its
    own, or no bias): (shift node, scale node, g, b, x, the Linears)."""
    from executorch.backends.transforms.utils import get_param_tensor

    graph = program.graph_module.graph
    for shift in [node for node in graph.nodes if _is_call(node, _aten.add.Tensor)]:
        b, scale = _constant_and_other(program, shift) if len(shift.args) == 2 and not shift.kwargs else (None, None)
        if b is None or not _is_call(scale, _aten.mul.Tensor) or len(scale.users) != 1 or len(scale.args) != 2:
            continue
        g, y = _constant_and_other(program, scale)
        readers = list(shift.users)
        if g is None or not readers or not all(_folds_into(program, linear, shift) for linear in readers):
            continue
        features = get_param_tensor(program, readers[0].args[1]).shape[1]
        shapes = {tuple(get_param_tensor(program, constant).shape) for constant in (g, b)}
        if shapes == {(features,)}:
            yield shift, scale, g, b, y, readers


def fold_layer_norm_affine(program: torch.export.ExportedProgram) -> int:
    """Rewrite, in place, each foldable `x * g + b` into the constants of the Linears that read it; returns how
    many such pairs were folded."""
    from executorch.backends.transforms.utils import get_param_tensor

    folded = 0
    for shift, scale, g, b, y, readers in list(_foldable_affines(program)):
        gain, offset = get_param_tensor(program, g).detach(), get_param_tensor(program, b).detach()
        for linear in readers:
            _fold_into(program, linear, y, gain, offset)
        _erase_affine(program, shift, scale, g, b)
        folded += 1
    if folded:
        program.graph_module.recompile()
    return folded


def fold_layer_norm_affine_as_ops(program: torch.export.ExportedProgram) -> int:
    """The same rewrite for a graph that trains (QAT): each Linear reads `x` with weight `W * g` and bias
    `W b + c` computed in the graph from the parameters themselves, so gradients still reach W, g, b and c of
    the model, whose layout is unchanged. The computed weight is what the Linear's weight fake-quant sees, as
    the converted graph's folded int8 weight will be. Returns how many pairs were folded."""
    graph = program.graph_module.graph
    folded = 0
    for shift, scale, g, b, y, readers in list(_foldable_affines(program)):
        for linear in readers:
            weight = linear.args[1]
            bias = linear.args[2] if len(linear.args) > 2 else None
            with graph.inserting_before(linear):
                scaled = _call(graph, _aten.mul.Tensor, weight, g)
                # mv, not linear: a `linear` node would be taken for a layer and quantized
                shifted = _call(graph, _aten.mv.default, weight, b)
                if bias is not None:
                    shifted = _call(graph, _aten.add.Tensor, shifted, bias)
            linear.args = (y, scaled, shifted)
        _erase_affine(program, shift, scale, g, b)  # g and b stay: the computed weights read them
        folded += 1
    if folded:
        program.graph_module.recompile()
    return folded


def _call(graph, target, *args):
    node = graph.call_function(target, args)
    node.meta["val"] = target(*[arg.meta["val"] for arg in args])  # the fake tensor later passes read
    return node


def _erase_affine(program, shift, scale, g, b) -> None:
    from executorch.backends.transforms.utils import delete_constant_placeholder

    graph = program.graph_module.graph
    graph.erase_node(shift)
    graph.erase_node(scale)
    for constant in (g, b):
        if not constant.users:
            delete_constant_placeholder(program, constant)


def _folds_into(program, linear, shift) -> bool:
    """Whether `linear` reads `shift` as its input and owns its weight and bias (no other node reads them)."""
    from executorch.backends.transforms.utils import get_param_tensor, is_param_node

    if not _is_call(linear, _aten.linear.default) or linear.args[0] is not shift or linear.kwargs:
        return False
    constants = [arg for arg in linear.args[1:] if arg is not None]
    return all(isinstance(node, torch.fx.Node) and is_param_node(program, node) and len(node.users) == 1
               for node in constants) and get_param_tensor(program, linear.args[1]).dim() == 2


def _fold_into(program, linear, y, gain: torch.Tensor, offset: torch.Tensor) -> None:
    """linear(y * gain + offset, W, c) -> linear(y, W * gain, W offset + c), the new constants in place."""
    from executorch.backends.transforms.utils import create_constant_placeholder, get_param_tensor, set_param_tensor
    from torch.export.graph_signature import InputKind

    graph = program.graph_module.graph
    weight = linear.args[1]
    bias = linear.args[2] if len(linear.args) > 2 else None
    w = get_param_tensor(program, weight).detach()
    # in float64, so the folded constants carry no more rounding than the two ops they replace
    new_bias = w.double() @ offset.double()
    if bias is not None:
        new_bias = new_bias + get_param_tensor(program, bias).detach().double()
    set_param_tensor(program, weight, (w.double() * gain.double()).to(w.dtype))
    if bias is not None:
        set_param_tensor(program, bias, new_bias.to(w.dtype))
    else:
        first_input = next(node for node in graph.nodes if node.op == "placeholder")
        with graph.inserting_before(first_input):
            bias = create_constant_placeholder(program, graph, f"{weight.name}_folded_bias", InputKind.PARAMETER,
                                               new_bias.to(w.dtype))
    linear.args = (y, weight, bias)
