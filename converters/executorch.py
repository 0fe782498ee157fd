"""ExecuTorch target: `torch.export` -> `to_edge_transform_and_lower` with the XNNPACK partitioner -> `.pte`.

The goal for every family is one XNNPACK partition and no undelegated compute op. The models make that
possible (matmul-statistics LayerNorm, 3-D bmm attention, slices instead of select/unbind, one-hot unfold
convolutions, resize as mm); this module lowers, then reports what stayed outside XNNPACK so a regression
shows up as a number in the manifest rather than as a slow phone.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import EdgevitError
from . import predict_all
from .executorch_folding import fold_layer_norm_affine
from .executorch_lowering import faster_lowering

NAME = "executorch"
ARTIFACT = "model.pte"
PRECISIONS = ("fp32",)  # XNNPACK rejects fp16 GELU, so an fp16 graph would split; int8 comes from quantization
LAYER_NORM = "matmul"  # XNNPACK has no LayerNorm kernel: every native LayerNorm would be a graph break
CONV = "gemm"  # its convolution kernels ran 2-3x slower than its GEMM here: see edgevit.models.Conv2d
RUNS_HERE = True
# Graph plumbing that is not compute: outputs of a delegate call, and memory-planning helpers.
NON_COMPUTE = {"getitem", "alloc", "executorch_call_delegate"}
_SCALAR_TYPES = {6: "float32", 5: "float16", 1: "int8", 0: "uint8", 3: "int32", 4: "int64"}  # c10::ScalarType


def toolchain_versions() -> dict:
    from importlib.metadata import version

    return {"executorch": version("executorch"), "torchao": version("torchao")}


def convert(model: nn.Module, example: torch.Tensor, artifact: Path, precision: str = "fp32") -> dict:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    stage = "export"
    try:
        with torch.no_grad():
            # non-strict: 2-3x faster to trace; strictness is the models' contract, checked by edgevit.analysis
            program = torch.export.export(model.eval(), (example,), strict=False)
            # weights reshaped in the graph (convs in GEMM form) must be constants for XNNPACK to take them; int8
            # weights must stay int8 constants + dequantize, so (de)quantize ops are never folded into floats
            quant_ops = {node.target for node in program.graph.nodes
                         if node.op == "call_function" and _is_quant_primitive(node.target)}
            program = constant_prop_pass(program, custom_skip_targets=quant_ops)
            folded = fold_layer_norm_affine(program)
        stage = "lower (XNNPACK)"
        with faster_lowering():
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        delegation = _delegation_report(get_delegation_info(edge.exported_program().graph_module))
        stage = "serialize"
        executorch_program = edge.to_executorch()
        Path(artifact).write_bytes(executorch_program.buffer)
    except EdgevitError:
        raise
    except Exception as exc:  # the toolchain's own errors: name the stage so a user knows where it broke
        raise EdgevitError(f"ExecuTorch conversion failed at the {stage} stage: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    return {**inspect(artifact), "delegation": delegation, "folded_layer_norm_affines": folded}


def _is_quant_primitive(target) -> bool:
    name = str(target)
    return "quantize" in name or "choose_qparams" in name


def _delegation_report(info) -> dict:
    frame = info.get_operator_delegation_dataframe()
    delegated, undelegated = {}, {}
    for row in frame.itertuples():
        if row.op_type == "Total":
            continue
        name = row.op_type.replace("aten_", "").replace("_default", "")
        if row.occurrences_in_delegated_graphs:
            delegated[name] = int(row.occurrences_in_delegated_graphs)
        if row.occurrences_in_non_delegated_graphs and name not in NON_COMPUTE:
            undelegated[name] = int(row.occurrences_in_non_delegated_graphs)
    return {"partitions": int(info.num_delegated_subgraphs), "delegated_ops": delegated,
            "undelegated_ops": undelegated, "undelegated_compute_ops": sum(undelegated.values())}


def _load_method(artifact: Path):
    from executorch.runtime import Runtime

    return Runtime.get().load_program(str(artifact)).load_method("forward")


def load(artifact: Path, threads: int | None = None):
    if threads:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        _unsafe_reset_threadpool(threads)
    method = _load_method(artifact)
    return lambda image: method.execute([torch.from_numpy(np.ascontiguousarray(image[None], dtype=np.float32))])[0][0]


def run(artifact: Path, images: np.ndarray, threads: int | None = None) -> np.ndarray:
    return predict_all(load(artifact, threads), images)


def inspect(artifact: Path) -> dict:
    """Delegates and the kernels left outside them, read from the .pte itself; I/O from the runtime."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    pte = deserialize_pte_binary(Path(artifact).read_bytes())
    program = getattr(pte, "program", pte)
    plan = program.execution_plan[0]
    instructions = Counter(type(i.instr_args).__name__ for i in plan.chains[0].instructions)
    kernels = [op.name for op in plan.operators]
    meta = _load_method(artifact).metadata

    def describe(count, info, prefix):
        return [{"name": f"{prefix}{i}", "shape": list(info(i).sizes()),
                 "dtype": str(_SCALAR_TYPES.get(int(info(i).dtype()), info(i).dtype()))} for i in range(count)]

    return {
        "backends": sorted({d.id for d in plan.delegates}),
        "num_delegate_calls": instructions.get("DelegateCall", 0),
        "portable_kernels": kernels,
        "num_kernel_calls": instructions.get("KernelCall", 0),
        "inputs": describe(meta.num_inputs(), meta.input_tensor_meta, "input"),
        "outputs": describe(meta.num_outputs(), meta.output_tensor_meta, "output"),
    }
