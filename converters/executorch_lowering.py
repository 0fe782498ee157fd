"""Make `to_edge_transform_and_lower` cheaper without changing what it produces (executorch 1.5.1).

Lowering TNT-Ti took ~135 s on a 2-core host, most of it toolchain bookkeeping rather than compilation:
- every pass that re-traces the graph deep-copies each node's provenance chain, which grows by one level per
  pass (~10 % of the time);
- XNNPACK's preprocess runs 17 passes in turn, each re-tracing and re-validating the whole ~1,800-node graph
  (2-5 s apiece) even when the graph holds none of the ops the pass rewrites (batch norm, PReLU, 1-D convs,
  upsampling patterns, SDPA patterns, dim-order ops, fusable activations, quantize nodes: ~30 s for TNT-Ti).
`faster_lowering()` shares the provenance chains and skips a pass only when the graph provably gives it
nothing to rewrite, by the same test the pass itself applies; every other pass runs as upstream runs it.
"""
from __future__ import annotations

import operator
from contextlib import contextmanager


@contextmanager
def faster_lowering():
    """Yields the list of XNNPACK passes skipped so far (their names), filled in as lowering goes."""
    with _shared_provenance(), _skip_inapplicable_xnnpack_passes() as skipped:
        yield skipped


@contextmanager
def _shared_provenance():
    """Let torch.fx share, instead of deep-copy, each node's provenance chain while a program is lowered.

    Chains are never mutated once recorded, so sharing the recorded levels keeps exactly the same provenance.
    """
    from torch.fx.traceback import NodeSource

    deep_copying_init = NodeSource.__init__

    def sharing_init(self, node, pass_name="", action=None):
        chain = node.meta.get("from_node") if node is not None else None
        if chain is None:
            return deep_copying_init(self, node, pass_name, action)
        node.meta["from_node"] = []  # nothing for the original to copy ...
        try:
            deep_copying_init(self, node, pass_name, action)
        finally:
            node.meta["from_node"] = chain
        self.from_node = list(chain)  # ... the recorded levels are shared instead

    NodeSource.__init__ = sharing_init
    try:
        yield
    finally:
        NodeSource.__init__ = deep_copying_init


def _op_name(target) -> str:
    return getattr(target, "__name__", str(target))


def _calls(graph) -> list:
    return [node for node in graph.nodes if node.op == "call_function"]


_BATCH_NORMS = {"aten.native_batch_norm.default", "aten._native_batch_norm_legit_no_training.default"}


def _has_conv1d(graph) -> bool:
    # Conv1dUnsqueezePass's own test: the weight's rank
    return any(_op_name(node.target) == "aten.convolution.default" and len(node.args) > 1
               and getattr(node.args[1].meta.get("val"), "dim", lambda: 0)() == 3 for node in _calls(graph))


def _matches_a_pattern(patterns):
    """A subgraph match needs every op of the pattern in the graph: without them the matcher finds nothing."""
    def applies(graph) -> bool:
        present = {_op_name(node.target) for node in _calls(graph)}
        return any({_op_name(node.target) for node in _calls(pattern.graph)} <= present for pattern in patterns())
    return applies


def _applicability():
    from executorch.backends.xnnpack._passes.fuse_activation_pass import FuseActivationPass
    from executorch.backends.xnnpack.partition.graphs import bilinear_2d, sdpa
    from executorch.backends.xnnpack.utils.quant_utils import is_dequant, is_quant
    from executorch.exir.passes.dim_order_ops_registry import MemoryFormatOpsMap

    return {
        "DimOrderOpsRevertPass": lambda graph: any(n.target in MemoryFormatOpsMap for n in _calls(graph)),
        # it copies custom metadata onto quantize/dequantize nodes: float graphs have none
        "PropagateCustomMetaPass": lambda graph: any(is_quant(n) or is_dequant(n) for n in _calls(graph)),
        "FuseActivationPass": lambda graph: any(n.target in FuseActivationPass.FUSEABLE_ACTIVATIONS
                                                for n in _calls(graph)),
        "FuseBatchNormPass": lambda graph: any(_op_name(n.target) in _BATCH_NORMS for n in _calls(graph)),
        "DecomposeBatchNorm": lambda graph: any(_op_name(n.target) in _BATCH_NORMS for n in _calls(graph)),
        "PReLUReshapePass": lambda graph: any(_op_name(n.target) == "aten._prelu_kernel.default"
                                              for n in _calls(graph)),
        "Conv1dUnsqueezePass": _has_conv1d,
        # it splits concatenations of more than 5 tensors
        "DecomposeConcatenate": lambda graph: any(_op_name(n.target) == "aten.cat.default" and len(n.args[0]) > 5
                                                  for n in _calls(graph)),
        # it folds max_pool2d_with_indices / max.dim and their getitem
        "RemoveGetItemPass": lambda graph: any(n.target is operator.getitem for n in _calls(graph)),
        "ConvertToUpsampleBilinear2d": _matches_a_pattern(lambda: list(bilinear_2d.get_graphs_dict())),
        "ConvertToSDPAPass": _matches_a_pattern(sdpa.get_graphs),
    }


@contextmanager
def _skip_inapplicable_xnnpack_passes():
    import executorch.backends.xnnpack._passes as xnnpack_passes

    transform = xnnpack_passes._transform
    applies = _applicability()
    skipped = []

    def transform_if_applicable(program, *passes, **kwargs):
        name = type(passes[0]).__name__ if len(passes) == 1 else None
        test = applies.get(name)
        if test is not None and not test(program.graph):
            skipped.append(name)
            return program
        return transform(program, *passes, **kwargs)

    xnnpack_passes._transform = transform_if_applicable
    try:
        yield skipped
    finally:
        xnnpack_passes._transform = transform
