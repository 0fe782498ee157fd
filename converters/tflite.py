"""TFLite / LiteRT target: `litert_torch.convert` (no TensorFlow), run with the LiteRT interpreter and XNNPACK.

The artifact is what an Android or embedded-Linux app loads: one static batch-1 signature, float32 input and
logits, built-in ops only (no Flex, no custom ops), and the whole graph in one XNNPACK partition.

- fp32: `litert_torch.convert(model, (example,)).export(path)`.
- fp16: fp16 weights with float compute, from ai-edge-quantizer's FLOAT_CASTING weight-only recipe applied to
  the fp32 file; XNNPACK folds the `DEQUANTIZE` of each constant at load time, so the graph stays one partition.
- `nhwc=True` makes the input (1, H, W, C), the layout camera pipelines produce, via
  `litert_torch.to_channel_last_io`; `run` detects the layout from the input shape.
- `uint8_input=True` takes 0..255 uint8 pixels with the model's mean/std folded in (a CAST, then one per-channel
  scale and shift); the mean/std also go into the file's metadata (`edgevit.pixels`), so `load` can take the usual
  normalised images and feed the pixels they came from. The CAST runs outside XNNPACK (it has no uint8 -> float
  cast), so the report says "not fully accelerated"; everything after it is one partition. Logits stay float32.

TFLite has no LayerNorm op: litert-torch decomposes a native `layer_norm` into MEAN x2, SQUARED_DIFFERENCE, ADD,
RSQRT, MUL, SUB (all XNNPACK builtins). Both LayerNorm forms give one XNNPACK partition. The matmul form (means as
FULLY_CONNECTED with an (N, 1) averaging vector) has fewer ops (TINY tnt: 206 vs 300) and is ~5 % faster on
TINY tnt (57 vs 60 us, 1 thread), where per-op dispatch dominates; at deployment size the native decomposition
wins (tnt_ti 42.7 vs 45.1 ms, t2t_vit_7 31.4 vs 32.2 ms, 1 thread, x86): a MEAN reduction beats a GEMV with
one output channel. So this target declares "native".
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from ..errors import EdgevitError
from ..models.layers import LayerNorm
from . import predict_all
from .pixels import PixelInput, check_normalisation, to_pixels

NAME = "tflite"
ARTIFACT = "model.tflite"
PRECISIONS = ("fp32", "fp16")
LAYER_NORM = "native"
CONV = "native"
RUNS_HERE = True
_PROGRESS_ENV = "LITERT_TORCH_SHOW_PROGRESS"
_OPERATOR = r"\b(?:aten|stablehlo|mhlo|chlo|tfl|tf)\.[A-Za-z_][\w.]*\w"
PIXELS_METADATA = "edgevit.pixels"  # {"mean": [...], "std": [...]} of a uint8-input artifact
_CUSTOM = 32  # BuiltinOperator.CUSTOM: Flex ops and custom ops are both CUSTOM with a custom_code
# Ops that only move or reshape data: a partition break on one of these still leaves all the compute delegated.
_LAYOUT_OPS = {"RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "DEQUANTIZE", "QUANTIZE", "CAST"}


def toolchain_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("litert-torch", "litert-converter", "ai-edge-litert", "ai-edge-quantizer"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def convert(model: nn.Module, example: torch.Tensor, artifact: Path, precision: str = "fp32",
            nhwc: bool = False, uint8_input: bool = False, verbose: bool = False, quant_config=None) -> dict:
    """Write `artifact`; `nhwc=True` gives a (1, H, W, C) input; `uint8_input=True` a 0..255 uint8 one with the
    normalisation of `model.pretrained_cfg` inside; `verbose` shows litert-torch's progress and logs;
    `quant_config` (litert-torch's QuantConfig) for a PT2E-quantized model (edgevit.quantization)."""
    import litert_torch

    artifact = Path(artifact)
    if precision not in PRECISIONS:
        raise EdgevitError(f"the tflite target has no precision '{precision}'; choose one of: {', '.join(PRECISIONS)}")
    if example.ndim != 4 or example.shape[0] != 1:
        raise EdgevitError(f"the tflite target exports static batch-1 images: the example must be (1, C, H, W), "
                           f"got {tuple(example.shape)}")
    started = time.perf_counter()
    module, sample = model.eval(), example
    pixels = None
    if uint8_input:
        # edgevit models and their quantized wrappers (QuantizedModel) carry pretrained_cfg; a plain module may not
        cfg = getattr(model, "pretrained_cfg", None) or {}
        mean, std = check_normalisation(cfg, int(example.shape[1]), "uint8_input=True")
        pixels = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
        module = PixelInput(module, mean, std, from_uint8=True).eval()
        sample = torch.round(to_pixels(example.float(), mean, std)).to(torch.uint8)
    if nhwc:
        module = litert_torch.to_channel_last_io(module, args=[0]).eval()
        sample = sample.permute(0, 2, 3, 1).contiguous()
    log: list[str] = []
    try:
        with _quiet(verbose, log), torch.no_grad():
            edge = litert_torch.convert(module, (sample,), quant_config=quant_config)
    except Exception as exc:  # the toolchain raises anything from torch.export errors to MLIR legalization
        raise _toolchain_error(_stage_of(exc), exc, log) from exc
    try:
        with _quiet(verbose, log):
            edge.export(str(artifact))
    except Exception as exc:
        raise _toolchain_error("serialize", exc, log) from exc
    fp32_size = artifact.stat().st_size
    if precision == "fp16":
        _cast_weights_to_fp16(artifact)
    if pixels:
        _write_metadata(artifact, PIXELS_METADATA, json.dumps(pixels))
    report = inspect(artifact)
    unsupported = [f"Flex op {op}" for op in report["flex_ops"]] + [f"custom op {op}" for op in report["custom_ops"]]
    if report["runtime_error"] and not unsupported:
        missing = re.findall(r"builtin opcode '(\w+)'", report["runtime_error"])
        unsupported += [f"builtin {op} (no LiteRT CPU kernel)" for op in missing] or [report["runtime_error"]]
    if unsupported:
        raise EdgevitError(
            f"TFLite conversion (convert stage) produced ops that LiteRT's builtin runtime cannot run: "
            f"{'; '.join(unsupported)}. Rewrite the module that produces them with portable ops "
            f"(`edgevit.analysis.check_export_clean` lists non-portable ops) and convert again.")
    forms = sorted({m.form for m in model.modules() if isinstance(m, LayerNorm)})
    report.update(precision=precision, nhwc=nhwc, uint8_input=uint8_input,
                  layer_norm=forms[0] if len(forms) == 1 else forms or None,
                  conversion_seconds=round(time.perf_counter() - started, 2))
    if precision == "fp16":
        report["fp32_size_bytes"] = fp32_size
    return report


@contextmanager
def _quiet(verbose: bool, log: list[str]) -> Iterator[None]:
    """Hide litert-torch's progress lines and the converter's native logging; keep them in `log` for errors."""
    if verbose:
        yield
        return
    previous = os.environ.get(_PROGRESS_ENV)
    os.environ[_PROGRESS_ENV] = "n"
    try:
        with _captured_stderr() as captured:
            yield
    finally:
        log.extend(captured)
        if previous is None:
            os.environ.pop(_PROGRESS_ENV, None)
        else:
            os.environ[_PROGRESS_ENV] = previous


def _stage_of(exc: BaseException) -> str:
    """'export' when the failure is inside litert_torch's torch.export call, otherwise 'convert' (lowering)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "export_torch_signature":
            return "export"
        tb = tb.tb_next
    return "convert"


def _toolchain_error(stage: str, exc: BaseException, log: list[str] | None = None) -> EdgevitError:
    """EdgevitError naming the stage and, where the toolchain's message or error log names them, the operators."""
    message = str(exc).strip() or type(exc).__name__
    errors = [line.strip() for line in "".join(log or []).splitlines()
              if re.match(r"\s*(E\d{4}|error|ERROR)\b", line) or "error:" in line]
    named = re.findall(_OPERATOR, message) + re.findall(_OPERATOR, "\n".join(errors))
    operators = list(dict.fromkeys(named))[:5]
    where = f" at operator(s) {', '.join(operators)}" if operators else ""
    text = "\n".join(message.splitlines()[:8])
    if errors:
        text += "\nconverter log:\n" + "\n".join(errors[-5:])
    return EdgevitError(f"TFLite conversion failed in the {stage} stage{where}: {type(exc).__name__}: {text}\n"
                        "Check that the model exports clean (`edgevit.analysis.check_export_clean`) and is in eval "
                        "mode; static batch-1 shapes only.")


def _cast_weights_to_fp16(artifact: Path) -> None:
    """Rewrite `artifact` in place with fp16 weights (ai-edge-quantizer FLOAT_CASTING, weight-only)."""
    from ai_edge_quantizer import qtyping, quantizer

    rewrite_with_ai_edge_quantizer(artifact, "quantize (fp16 weights)", lambda qz: qz.add_weight_only_config(
        regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
        algorithm_key=quantizer.AlgorithmName.FLOAT_CASTING))


def quantize_fully_connected_dynamic(artifact: Path, output_names: list[str]) -> None:
    """Rewrite `artifact` in place with dynamic-range int8 (per-channel int8 weights, activations quantized per
    inference) on the FULLY_CONNECTED ops whose output tensors are named in `output_names`; the rest stays float.

    litert-torch's own PT2E dynamic mode is not used for this: it turns every FULLY_CONNECTED weight to int8,
    the PT2E annotations notwithstanding (the T2T Performer's random features and any module kept float included).
    """
    from ai_edge_quantizer import qtyping

    # ai-edge-quantizer matches an op's scope: its output tensor names, each followed by ';'
    scope = "^(" + "|".join(re.escape(name) for name in output_names) + ");$"
    rewrite_with_ai_edge_quantizer(artifact, "quantize (dynamic int8)", lambda qz: qz.add_dynamic_config(
        regex=scope, operation_name=qtyping.TFLOperationName.FULLY_CONNECTED, num_bits=8,
        granularity=qtyping.QuantGranularity.CHANNELWISE))


def rewrite_with_ai_edge_quantizer(artifact: Path, stage: str, configure) -> None:
    """Apply the ai-edge-quantizer recipe that `configure(quantizer)` sets up to `artifact`, in place."""
    from ai_edge_quantizer import quantizer

    try:
        qz = quantizer.Quantizer(str(artifact))
        configure(qz)
        with _captured_stderr():  # its tensor-transformation progress bar ignores enable_progress_bar
            result = qz.quantize(enable_progress_bar=False, enable_progress_report=False)
    except Exception as exc:
        raise _toolchain_error(stage, exc) from exc
    artifact.write_bytes(bytes(result.quantized_model))


def fully_connected_ops(artifact: Path) -> list[tuple[str, np.ndarray | None]]:
    """(output tensor name, constant weight or None) of every FULLY_CONNECTED op, in graph order. litert-torch
    names an op's output after the module path it was traced in; the graph's output takes the signature's name."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(artifact),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    names = {tensor["index"]: tensor["name"] for tensor in interpreter.get_tensor_details()}
    ops = []
    for op in interpreter._get_ops_details():
        if op["op_name"] == "FULLY_CONNECTED":
            weight = op["inputs"][1]
            try:
                ops.append((names[op["outputs"][0]], np.array(interpreter.get_tensor(weight))))
            except ValueError:  # a weight computed at run time has no data before invoke
                ops.append((names[op["outputs"][0]], None))
    return ops


def _write_metadata(artifact: Path, name: str, value: str) -> None:
    """Add (or replace) a named metadata entry of the flatbuffer, as TFLite's own metadata is stored."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(artifact.read_bytes(), 0))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(value.encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name.decode() != name] + [entry]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    artifact.write_bytes(bytes(builder.Output()))


def _read_metadata(artifact: Path, name: str) -> str | None:
    model, _ = _read_model(Path(artifact))
    for index in range(model.MetadataLength()):
        entry = model.Metadata(index)
        if entry.Name().decode() == name:
            return bytes(model.Buffers(entry.Buffer()).DataAsNumpy()).decode()
    return None


@contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Send the native runtime's INFO/WARNING lines (written straight to fd 2) to a buffer instead of the console."""
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace"))


def _interpreter(artifact: Path, threads: int | None = None):
    """An interpreter with the default op resolver, which applies the XNNPACK delegate in `allocate_tensors`."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        with _captured_stderr():
            interpreter = Interpreter(model_path=str(artifact), num_threads=threads)
            interpreter.allocate_tensors()
    except Exception as exc:
        raise EdgevitError(f"LiteRT cannot load {artifact}: {str(exc).strip()}") from exc
    return interpreter


def _layout(shape) -> str | None:
    if len(shape) != 4:
        return None
    if shape[1] in (1, 3, 4) and shape[3] not in (1, 3, 4):
        return "NCHW"
    if shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        return "NHWC"
    return "NCHW" if shape[1] <= shape[3] else "NHWC"


def load(artifact: Path, threads: int | None = None):
    """A predictor for one normalised NCHW float32 image; XNNPACK with `threads` (None: runtime default)."""
    interpreter = _interpreter(Path(artifact), threads)
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    shape = tuple(int(d) for d in source["shape"])
    nhwc = _layout(shape) == "NHWC"
    expected = (shape[3], shape[1], shape[2]) if nhwc else shape[1:]
    in_scale, in_zero = source["quantization"]
    out_scale, out_zero = target["quantization"]
    pixels = json.loads(_read_metadata(artifact, PIXELS_METADATA) or "null")
    if source["dtype"] == np.uint8 and not in_scale and pixels is None:
        raise EdgevitError(f"{artifact} takes uint8 pixels but has no edgevit.pixels metadata; convert it again")

    def predict(image: np.ndarray) -> np.ndarray:
        image = np.asarray(image, dtype=np.float32)
        if tuple(image.shape) != tuple(expected):
            raise EdgevitError(f"{artifact} takes NCHW images of shape (N, {', '.join(map(str, expected))}), "
                               f"got an image of shape {image.shape}")
        if pixels:  # the 8-bit pixels these normalised values came from
            image = np.rint(to_pixels(image[None], pixels["mean"], pixels["std"]))[0]
        x = image.transpose(1, 2, 0)[None] if nhwc else image[None]
        if source["dtype"] != np.float32 and not pixels:  # full-int8 I/O: quantize with the input's parameters
            info = np.iinfo(source["dtype"])
            x = np.clip(np.round(x / in_scale + in_zero), info.min, info.max)
        interpreter.set_tensor(source["index"], np.ascontiguousarray(x, dtype=source["dtype"]))
        interpreter.invoke()
        y = interpreter.get_tensor(target["index"])
        if target["dtype"] != np.float32:
            y = (y.astype(np.float32) - out_zero) * out_scale
        return np.array(y, dtype=np.float32).reshape(-1)

    return predict


def run(artifact: Path, images: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Logits for NCHW float32 `images`, one batch-1 invoke each."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise EdgevitError(f"run takes NCHW images (N, C, H, W), got shape {images.shape}")
    return predict_all(load(artifact, threads), images)


def _read_model(artifact: Path):
    from ai_edge_litert import schema_py_generated as schema

    buffer = artifact.read_bytes()
    return schema.Model.GetRootAs(buffer, 0), schema


def _op_names(model, schema) -> list[tuple[str, str | None]]:
    """(builtin op name, custom code or None) for every operator of every subgraph."""
    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode().decode() if builtin == _CUSTOM and code.CustomCode() else None
        codes.append((names.get(builtin, f"BUILTIN_{builtin}"), custom))
    ops = []
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            ops.append(codes[subgraph.Operators(o).OpcodeIndex()])
    return ops


def _constant_bytes(model, schema) -> dict:
    """Bytes of constant tensor data by dtype (shows where the weights are fp16)."""
    dtypes = {value: key.lower() for key, value in vars(schema.TensorType).items() if not key.startswith("_")}
    sizes: Counter = Counter()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            if tensor.Buffer() == 0:
                continue
            buffer = model.Buffers(tensor.Buffer())
            size = buffer.DataLength() or buffer.Size()  # Size: data stored after the flatbuffer (large models)
            if size:
                sizes[dtypes.get(tensor.Type(), str(tensor.Type()))] += int(size)
    return dict(sorted(sizes.items()))


def _io(model, schema) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of the main subgraph: name, shape, dtype, layout (inputs), quantization."""
    dtypes = {value: key.lower() for key, value in vars(schema.TensorType).items() if not key.startswith("_")}
    subgraph = model.Subgraphs(0)

    def describe(index: int, with_layout: bool) -> dict:
        tensor = subgraph.Tensors(index)
        shape = [int(v) for v in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
        entry = {"name": tensor.Name().decode(), "shape": shape, "dtype": dtypes.get(tensor.Type(), str(tensor.Type()))}
        if with_layout:
            entry["layout"] = _layout(shape)
        quant = tensor.Quantization()
        scales = quant.ScaleAsNumpy() if quant is not None and quant.ScaleLength() else []
        zeros = quant.ZeroPointAsNumpy() if quant is not None and quant.ZeroPointLength() else [0]
        entry["quantization"] = {"scale": float(scales[0]), "zero_point": int(zeros[0])} if len(scales) else None
        return entry

    return ([describe(int(i), True) for i in subgraph.InputsAsNumpy()],
            [describe(int(i), False) for i in subgraph.OutputsAsNumpy()])


def _xnnpack_partitions(interpreter) -> tuple[int, dict]:
    """Number of XNNPACK partitions, and the census of the ops left on the builtin CPU kernels.

    After `allocate_tensors` the interpreter lists the original nodes and then one DELEGATE node per partition.
    An original op ran in a partition if one of its outputs leaves a partition, or if every consumer of its
    outputs did (walked backwards); ops feeding a partition or the graph output from outside did not.
    """
    ops = interpreter._get_ops_details()
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    original = [op for op in ops if op["op_name"] != "DELEGATE"]
    leaving = {int(t) for op in delegates for t in op["outputs"]}
    entering = {int(t) for op in delegates for t in op["inputs"]}
    graph_outputs = {int(d["index"]) for d in interpreter.get_output_details()}
    consumers: dict[int, list[int]] = {}
    for op in original:
        for t in op["inputs"]:
            consumers.setdefault(int(t), []).append(op["index"])
    on_cpu: set[int] = set()
    for op in reversed(original):
        outputs = {int(t) for t in op["outputs"]}
        if outputs & leaving:
            continue
        if outputs & (entering | graph_outputs) or any(c in on_cpu for t in outputs for c in consumers.get(t, ())):
            on_cpu.add(op["index"])
    census = Counter(op["op_name"] for op in original if op["index"] in on_cpu)
    return len(delegates), dict(sorted(census.items()))


def _fully_accelerated(artifact: Path) -> tuple[bool | None, str]:
    try:
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator

        with _captured_stderr():  # the LiteRT environment logs its accelerator registry when created and freed
            compiled = CompiledModel.from_file(str(artifact), hardware_accel=HardwareAccelerator.CPU)
            accelerated = bool(compiled.is_fully_accelerated())
            compiled.close()
            del compiled
        return accelerated, "CompiledModel.is_fully_accelerated (CPU accelerator)"
    except Exception as exc:  # the CompiledModel API is new; fall back on the interpreter's partitions
        return None, f"CompiledModel unavailable ({type(exc).__name__}: {exc})"


def inspect(artifact: Path) -> dict:
    artifact = Path(artifact)
    if not artifact.is_file():
        raise EdgevitError(f"{artifact} does not exist; convert the model first (target '{NAME}').")
    model, schema = _read_model(artifact)
    ops = _op_names(model, schema)
    census = Counter(name if custom is None else f"{name}:{custom}" for name, custom in ops)
    flex = sorted({custom for _, custom in ops if custom and custom.startswith("Flex")})
    custom_ops = sorted({custom for _, custom in ops if custom and not custom.startswith("Flex")})
    inputs, outputs = _io(model, schema)

    runtime_error, partitions, not_delegated = None, None, {}
    try:
        partitions, not_delegated = _xnnpack_partitions(_interpreter(artifact, threads=1))
    except EdgevitError as exc:  # e.g. a STABLEHLO_* builtin the LiteRT CPU runtime has no kernel for
        runtime_error = str(exc)
    accelerated, method = _fully_accelerated(artifact) if runtime_error is None else (False, "not loadable")
    if accelerated is None:
        accelerated = partitions == 1 and not set(not_delegated) - _LAYOUT_OPS
        method += "; fell back on: one XNNPACK partition and no other compute op"
    return {
        "inputs": inputs,
        "outputs": outputs,
        "layout": inputs[0]["layout"] if inputs else None,
        "ops": dict(sorted(census.items())),
        "num_ops": sum(census.values()),
        "subgraphs": model.SubgraphsLength(),
        "constant_bytes": _constant_bytes(model, schema),
        "size_bytes": artifact.stat().st_size,
        "xnnpack": {"partitions": partitions, "not_delegated": not_delegated,
                    "fully_accelerated": accelerated, "method": method},
        "fully_accelerated": accelerated,
        "flex_ops": flex,
        "custom_ops": custom_ops,
        "runtime_error": runtime_error,
    }
