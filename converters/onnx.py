"""ONNX target: `torch.onnx.export(dynamo=True)`, opset >= 18, simplified with onnxsim, run with ONNX Runtime.

The artifact is what a Jetson user feeds to TensorRT (`trtexec --onnx=model.onnx`): static batch-1 shapes,
`LayerNormalization` as one op (opset >= 17), so TensorRT maps it to its normalization layer and keeps fp16
stable. `inspect` lists the op census and the ops TensorRT's ONNX parser is known to reject or fall back on.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import predict_all

NAME = "onnx"
ARTIFACT = "model.onnx"
PRECISIONS = ("fp32", "fp16")
LAYER_NORM = "native"
CONV = "native"
RUNS_HERE = True
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 20
# Ops that TensorRT's ONNX parser rejects, or that mark a graph the export-clean rewrites should have removed.
TENSORRT_UNFRIENDLY = {"ScatterND": "in-place update; slow or unsupported", "NonZero": "data-dependent shape",
                       "Loop": "control flow", "If": "control flow", "Einsum": "limited support",
                       "Resize": "cubic resize needs TensorRT >= 8.6", "GatherND": "im2col-style gather"}
# On x86 CPUs without VNNI, ONNX Runtime's int8 MatMul/Gemm shifts int8 activations to uint8 and multiplies with
# VPMADDUBSW, whose int16 pair sums saturate (tnt_ti QAT: 760 of 73,728 pairs in one word-MLP layer, logit cosine
# 0.976 against the same graph run unfused). This option makes it use exact uint8 x uint8 kernels instead.
ORT_EXACT_INT8 = {"session.x64quantprecision": "1"}


def toolchain_versions() -> dict:
    import onnx
    import onnxruntime
    import onnxscript
    import onnxsim

    return {"onnx": onnx.__version__, "onnxscript": onnxscript.__version__, "onnxsim": onnxsim.__version__,
            "onnxruntime": onnxruntime.__version__}


def convert(model: nn.Module, example: torch.Tensor, artifact: Path, precision: str = "fp32",
            opset: int = DEFAULT_OPSET, simplify: bool = True) -> dict:
    import onnx

    if opset < 18:
        from ..errors import EdgevitError
        raise EdgevitError(f"opset {opset} is too old: edgevit needs >= 18 (LayerNormalization for TensorRT fp16)")
    with torch.no_grad():
        program = torch.onnx.export(model.eval(), (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], opset_version=opset, verbose=False)
    graph = program.model_proto
    # before onnxsim, which drops the exporter's module metadata
    float32_nodes = _float32_island_nodes(graph) if precision == "fp16" else []
    if simplify:
        import onnxsim
        simplified, ok = onnxsim.simplify(graph)
        if ok:
            graph = simplified
    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16
        # float I/O keeps the app code unchanged; LayerNormalization statistics stay fp32 inside the op
        graph = convert_float_to_float16(graph, keep_io_types=True, node_block_list=float32_nodes)
        _join_float32_islands(graph)
    separate_qdq_parameters(graph)  # after onnxsim, which may share equal constants again
    onnx.save(graph, str(artifact))
    return inspect(artifact)


def _float32_island_nodes(graph) -> list[str]:
    """Names of the nodes computed in the own code of a module that must stay float32 (`FLOAT32_MODULES`: the T2T
    Performer), from the class hierarchy the dynamo exporter records per node: the fp16 conversion keeps them
    float32, as PyTorch does under `.half()`. Without it exp(cap) was inf in fp16 and T2T-ViT-7's ONNX fp16 gave
    NaN logits on 1.3 % of Fashion-MNIST test images."""
    import ast

    from edgevit.models.t2t import FLOAT32_MODULES

    names = []
    for node in graph.graph.node:
        meta = {prop.key: prop.value for prop in node.metadata_props}
        hierarchy = ast.literal_eval(meta.get("pkg.torch.onnx.class_hierarchy", "[]"))
        modules = [kind for kind in hierarchy if not kind.startswith("aten.")]
        if modules and modules[-1].rsplit(".", 1)[-1] in FLOAT32_MODULES:
            names.append(node.name)
    return names


def _join_float32_islands(graph) -> int:
    """onnxruntime's fp16 converter wraps each blocked node in Casts of its own, so a value passing from one
    float32 node to the next still goes through fp16 (exp(80) became inf there), and one tensor read by two
    blocked nodes gets two Casts of the same name (an invalid model). Each fp16 -> fp32 Cast of an fp32 -> fp16
    Cast reads the float32 original instead, exactly; Casts nothing reads any more go. Returns the Casts removed."""
    from onnx import TensorProto

    def is_cast(node, to) -> bool:
        return node.op_type == "Cast" and any(a.name == "to" and a.i == to for a in node.attribute)

    producer = {output: node for node in graph.graph.node for output in node.output}
    original = {}
    for node in graph.graph.node:
        source = producer.get(node.input[0]) if node.input else None
        if is_cast(node, TensorProto.FLOAT) and source is not None and is_cast(source, TensorProto.FLOAT16):
            original[node.output[0]] = source.input[0]
    for node in graph.graph.node:
        for index, name in enumerate(node.input):
            if name in original:
                node.input[index] = original[name]
    removed = 0
    while True:
        read = {name for node in graph.graph.node for name in node.input} | {o.name for o in graph.graph.output}
        kept, defined = [], set()
        for node in graph.graph.node:
            if node.op_type == "Cast" and (node.output[0] not in read or node.output[0] in defined):
                continue
            defined.update(node.output)
            kept.append(node)
        if len(kept) == len(graph.graph.node):
            return removed
        removed += len(graph.graph.node) - len(kept)
        del graph.graph.node[:]
        graph.graph.node.extend(kept)


def separate_qdq_parameters(graph) -> int:
    """Give every QuantizeLinear/DequantizeLinear its own scale and zero-point initializers (the exporter shares
    equal ones, e.g. one zero point 0 for all of them). ONNX Runtime's int8-to-uint8 rewrite, which
    `ORT_EXACT_INT8` turns on, converts each zero point in place and fails on a shared one ("Attempt to replace
    the existing tensor"). Returns the number of initializers copied; float graphs are left as they are."""
    import onnx

    initializers = {tensor.name: tensor for tensor in graph.graph.initializer}
    taken, copies = set(), 0
    for node in graph.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for position in (1, 2):
            name = node.input[position] if position < len(node.input) else ""
            if name not in initializers:
                continue
            if name in taken:
                copy = onnx.TensorProto()
                copy.CopyFrom(initializers[name])
                copy.name = f"{name}_for_{node.output[0]}"
                graph.graph.initializer.append(copy)
                node.input[position] = copy.name
                copies += 1
            taken.add(name)
    return copies


def _session(artifact: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # no busy-waiting between runs: spinning threads take the cores from whatever else the app (or a
    # benchmark interleaving runtimes) runs next
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in ORT_EXACT_INT8.items():
        options.add_session_config_entry(key, value)
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        if "Attempt to replace the existing tensor" not in str(exc):
            raise
    # a QDQ model from elsewhere (or an older edgevit) with shared zero points: see separate_qdq_parameters
    import onnx

    graph = onnx.load(str(artifact))
    separate_qdq_parameters(graph)
    return ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])


def load(artifact: Path, threads: int | None = None):
    session = _session(artifact, threads)
    name = session.get_inputs()[0].name
    return lambda image: session.run(None, {name: np.asarray(image, dtype=np.float32)[None]})[0][0]


def run(artifact: Path, images: np.ndarray, threads: int | None = None) -> np.ndarray:
    return predict_all(load(artifact, threads), images)


def inspect(artifact: Path) -> dict:
    import onnx

    graph = onnx.load(str(artifact), load_external_data=False)
    ops = Counter(node.op_type for node in graph.graph.node)

    def describe(values):
        return [{"name": v.name, "shape": [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim],
                 "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name} for v in values]

    unfriendly = {op: reason for op, reason in TENSORRT_UNFRIENDLY.items() if op in ops}
    int8 = {"onnxruntime_session_config": ORT_EXACT_INT8,
            "why": "exact int8 products on x86 CPUs without VNNI (the default kernels saturate there)"} \
        if ops.get("QuantizeLinear") or ops.get("DynamicQuantizeLinear") else None
    return {
        "opset": max((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "inputs": describe(graph.graph.input),
        "outputs": describe(graph.graph.output),
        "ops": dict(sorted(ops.items())),
        "num_nodes": sum(ops.values()),
        "tensorrt": {"unfriendly_ops": unfriendly,
                     "verdict": "every op maps to a TensorRT layer" if not unfriendly else
                     "TensorRT may reject or fall back on: " + ", ".join(unfriendly)},
        **({"onnxruntime_int8": int8} if int8 else {}),
    }
