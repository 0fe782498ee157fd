"""Core ML target: `torch.export` -> coremltools 9 `ct.convert` -> an ML Program (`model.mlpackage`).

The package is what an iOS / macOS app loads with `MLModel` (or Vision's `VNCoreMLRequest` when it is built with
`image_input=True, labels=[...]`): static batch-1 shapes, native MIL `layer_norm`, `gelu` and `softmax`, fp16
compute by default (what the Neural Engine runs; the T2T Performer's own ops stay float32). The TorchScript
frontend is never used: it crashes under numpy >= 2.4 on any shape arithmetic (apple/coremltools#2633).

Conversion and inspection work on Linux; Core ML itself exists only on macOS, so `run` raises
`RuntimeUnavailable` elsewhere and `inspect` reports `"numerics_run": False`.

I/O: a float32 tensor `pixel_values` (1, C, H, W), already normalised as for the eager model, and a float32
`logits` (1, classes), in both precisions (fp16 models cast inside, so app code is the same). With
`image_input=True` the input is an image (RGB, or grayscale for 1-channel models) of 0..255 pixels and the
mean/std normalisation is part of the graph. With `labels`, the model is a Core ML classifier: outputs
`classLabel` (string), `classLabel_probs` (label -> softmax probability, what Vision reports as confidences)
and `logits`.
"""
from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import EdgevitError
from . import predict_all
from .pixels import PixelInput, check_normalisation, to_pixels

NAME = "coreml"
ARTIFACT = "model.mlpackage"
PRECISIONS = ("fp32", "fp16")
LAYER_NORM = "native"
CONV = "native"
RUNS_HERE = sys.platform == "darwin"
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
PROBABILITIES_NAME = "probabilities"  # internal: the tensor behind the classifier's dictionary output
CLASS_LABEL_NAME = "classLabel"  # Core ML's names for a classifier's outputs (coremltools' defaults)
CLASS_PROBS_NAME = "classLabel_probs"
DEFAULT_TARGET = "iOS16"
DEFAULT_COMPUTE_UNITS = "ALL"
MAX_RANK = 5  # Core ML rejects tensors of higher rank (apple/coremltools#2536); the ANE prefers <= 4
META_PREFIX = "edgevit."
# MIL ops that mean the export-clean rewrites did not hold (or that Core ML runs badly on the Neural Engine).
UNCLEAN_OPS = {
    "gather": "index gather (im2col / unfold or fancy indexing)",
    "gather_nd": "im2col-style gather",
    "gather_along_axis": "index gather",
    "scatter": "in-place update", "scatter_nd": "in-place update", "scatter_along_axis": "in-place update",
    "upsample_bilinear": "resize in the graph (position embeddings should be resized at load time)",
    "upsample_nearest_neighbor": "resize in the graph",
    "resize_bilinear": "resize in the graph", "resize_nearest_neighbor": "resize in the graph",
    "resize": "resize in the graph", "crop_resize": "resize in the graph",
    "while_loop": "control flow", "cond": "control flow",
    "non_zero": "data-dependent shape", "non_maximum_suppression": "data-dependent shape",
    "sliding_windows": "im2col-style windowing",
    "space_to_batch": "im2col-style rearrangement", "batch_to_space": "im2col-style rearrangement",
}
_DTYPES = {65568: "float32", 65552: "float16", 131104: "int32", 131080: "int8"}  # ArrayFeatureType codes


def toolchain_versions() -> dict:
    import coremltools

    return {"coremltools": coremltools.__version__, "torch": torch.__version__, "numpy": np.__version__}


class _Probabilities(nn.Module):
    """(logits, softmax(logits)): the classifier's dictionary gets probabilities, `logits` stays exact."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        logits = self.model(x)
        return logits, torch.softmax(logits, dim=-1)


def _target(ct, name: str):
    members = ct.target.__members__
    if name not in members:
        raise EdgevitError(f"unknown Core ML deployment target '{name}'; choose one of: "
                           f"{', '.join(n for n in members if int(members[n]) >= int(ct.target.iOS15))}")
    target = members[name]
    if int(target) < int(ct.target.iOS15):
        raise EdgevitError(f"deployment target {name} is too old for an ML Program (model.mlpackage); "
                           "choose iOS15 / macOS12 or newer (edgevit's default is iOS16)")
    return target


def _compute_units(ct, name: str):
    units = ct.ComputeUnit.__members__
    if name not in units:
        raise EdgevitError(f"unknown Core ML compute units '{name}'; choose one of: {', '.join(units)}")
    return units[name]


def _stage_error(stage: str, exc: BaseException) -> EdgevitError:
    """An EdgevitError naming the stage and, where the toolchain says it, the operator."""
    text = str(exc).strip() or type(exc).__name__
    op = None
    for pattern in (r"Unsupported fx node (\S+?),", r"convert function for op '([^']+)'", r"op '([^']+)'"):
        match = re.search(pattern, text)
        if match:
            op = match.group(1)
            break
    what = f" at operator '{op}'" if op else ""
    hint = {"export": "the model must pass `edgevit check` (a strict torch.export) first",
            "convert": "coremltools has no conversion for it; rewrite that op in the model (see "
                       "edgevit/models/layers.py for the export-clean forms) or report it",
            "serialize": "check that the destination is writable and has free space"}[stage]
    first_line = text.splitlines()[0][:300]
    return EdgevitError(f"Core ML {stage} failed{what}: {type(exc).__name__}: {first_line}. Hint: {hint}.")


def _labels(labels, num_classes: int | None) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)) or not all(isinstance(label, str) for label in labels):
        raise EdgevitError("labels must be a list of class names (strings), one per output class")
    labels = list(labels)
    if num_classes is not None and len(labels) != num_classes:
        raise EdgevitError(f"got {len(labels)} labels for a model with {num_classes} classes; "
                           "pass exactly one label per class")
    if len(set(labels)) != len(labels):
        raise EdgevitError("labels must be unique: a Core ML classifier maps each label to one probability")
    return labels


def convert(model: nn.Module, example: torch.Tensor, artifact: Path, precision: str = "fp32",
            minimum_target: str = DEFAULT_TARGET, compute_units: str = DEFAULT_COMPUTE_UNITS,
            image_input: bool = False, labels: list[str] | None = None) -> dict:
    """Write `artifact` (a `.mlpackage` directory) and return `inspect(artifact)` plus conversion facts."""
    import coremltools as ct

    artifact = Path(artifact)
    if artifact.suffix != ".mlpackage":
        raise EdgevitError(f"a Core ML ML Program is a .mlpackage directory; got '{artifact.name}'")
    if precision not in PRECISIONS:
        raise EdgevitError(f"Core ML precision must be one of {', '.join(PRECISIONS)}, not '{precision}' "
                           "(for int8 / palettized weights use edgevit's quantization step)")
    target = _target(ct, minimum_target)
    units = _compute_units(ct, compute_units)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    example = example[:1].float()
    channels = int(example.shape[1])
    labels = _labels(labels, cfg.get("num_classes"))
    mean, std = cfg.get("mean"), cfg.get("std")
    if image_input:
        mean, std = check_normalisation(cfg, channels, "image_input=True")
        if channels not in (1, 3):
            raise EdgevitError(f"a Core ML image input is RGB or grayscale; this model takes {channels} "
                               "channels, so convert it with image_input=False")

    model = model.eval()
    classifier = labels is not None
    if image_input:
        wrapped, sample = PixelInput(model, mean, std).eval(), to_pixels(example, mean, std)
        wrapped = _Probabilities(wrapped).eval() if classifier else wrapped
        layout = ct.colorlayout.RGB if channels == 3 else ct.colorlayout.GRAYSCALE
        inputs = [ct.ImageType(name=INPUT_NAME, shape=tuple(sample.shape), color_layout=layout)]
    else:
        wrapped, sample = (_Probabilities(model).eval() if classifier else model), example
        inputs = [ct.TensorType(name=INPUT_NAME, shape=tuple(sample.shape), dtype=np.float32)]
    outputs = [ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)]
    if classifier:
        outputs.append(ct.TensorType(name=PROBABILITIES_NAME, dtype=np.float32))

    started = time.perf_counter()
    try:
        with torch.no_grad():
            program = torch.export.export(wrapped, (sample,)).run_decompositions({})
    except Exception as exc:  # noqa: BLE001 - any toolchain failure becomes a stage error
        raise _stage_error("export", exc) from exc
    exported = time.perf_counter()
    compute_precision = _fp16_but_float32_modules(ct, program) if precision == "fp16" else ct.precision.FLOAT32
    try:
        if not classifier:
            mlmodel = ct.convert(program, convert_to="mlprogram", inputs=inputs, outputs=outputs,
                                 minimum_deployment_target=target, compute_precision=compute_precision,
                                 compute_units=units, skip_model_load=True)
        else:
            mlmodel = _convert_classifier(ct, program, inputs, outputs, labels, target, compute_precision, units)
    except EdgevitError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _stage_error("convert", exc) from exc
    converted = time.perf_counter()

    variant = getattr(model, "variant", None) or type(model).__name__
    mlmodel.author = "edgevit"
    mlmodel.short_description = (f"{variant} image classifier ({channels}x{sample.shape[-2]}x{sample.shape[-1]}, "
                                 f"{precision}), converted by edgevit")
    mlmodel.version = __version__
    meta = {"variant": variant, "precision": precision, "compute_units": compute_units,
            "minimum_target": minimum_target, "input": "image" if image_input else "tensor",
            "num_classes": str(cfg.get("num_classes", "")), "input_size": json.dumps(list(sample.shape[1:]))}
    if mean is not None and std is not None:
        meta.update(mean=json.dumps([float(v) for v in mean]), std=json.dumps([float(v) for v in std]))
    for key, value in meta.items():
        mlmodel.user_defined_metadata[META_PREFIX + key] = str(value)
    if classifier:  # the two-step classifier conversion records the MIL program as its source; say the truth
        mlmodel.user_defined_metadata["com.github.apple.coremltools.source"] = f"torch=={torch.__version__}"
        mlmodel.user_defined_metadata["com.github.apple.coremltools.source_dialect"] = "TorchExport::ATEN"
    if image_input:
        mlmodel.input_description[INPUT_NAME] = (
            f"{'RGB' if channels == 3 else 'grayscale'} image, {sample.shape[-1]}x{sample.shape[-2]}, 0..255 "
            "pixels; the mean/std normalisation is inside the model")
    else:
        mlmodel.input_description[INPUT_NAME] = (
            f"float32 (1, {channels}, {sample.shape[-2]}, {sample.shape[-1]}) NCHW, normalised "
            f"(pixel / 255 - mean) / std{f' with mean {list(mean)}, std {list(std)}' if mean else ''}")
    mlmodel.output_description[OUTPUT_NAME] = "float32 class logits (before softmax)"
    if classifier:
        mlmodel.output_description[CLASS_LABEL_NAME] = "the most probable class"
        mlmodel.output_description[CLASS_PROBS_NAME] = "softmax probability of each class"

    try:
        mlmodel.save(str(artifact))
    except Exception as exc:  # noqa: BLE001
        raise _stage_error("serialize", exc) from exc
    saved = time.perf_counter()
    report = inspect(artifact)
    report["seconds"] = {"export": round(exported - started, 2), "convert": round(converted - exported, 2),
                         "serialize": round(saved - converted, 2)}
    return report


def _fp16_but_float32_modules(ct, program):
    """fp16 compute for every op but those in the own code of `FLOAT32_MODULES` (the T2T Performer: exp(cap) is
    inf in fp16; ONNX fp16 without this island gave NaN logits on 1.3 % of T2T-ViT-7's test images).

    coremltools keeps no module of an op, only the `stack_trace` of the torch node it came from (also on ops its
    passes fuse or rewrite): the island is the stack traces that only Performer-own nodes have."""
    from coremltools.converters.mil.mil.scope import ScopeSource

    from ..quantization.islands import in_float32_module_code

    island, rest = set(), set()
    for node in program.graph.nodes:
        if node.op == "call_function" and node.meta.get("stack_trace"):
            (island if in_float32_module_code(node) else rest).add(node.meta["stack_trace"])
    island -= rest
    if not island:
        return ct.precision.FLOAT16

    def to_fp16(op) -> bool:
        trace = op.scopes.get(ScopeSource.EXIR_STACK_TRACE) or [None]
        return trace[0] not in island

    return ct.transform.FP16ComputePrecision(op_selector=to_fp16)


def _convert_classifier(ct, program, inputs, outputs, labels, target, compute_precision, units):
    """A classifier whose `logits` stay an output beside the classifier's label and dictionary.

    coremltools 9.0 cannot do this in one `ct.convert`: when the function has declared output types (always for
    fp16 at iOS16+, where it defaults the I/O types) and the classifier keeps another output, its exporter
    indexes the declared types past their end (IndexError in `get_func_output`). So: convert to a MIL program
    first (all passes, fp16 included), drop the declared output types (the dtypes are already in the graph),
    then export that program as a classifier with no further precision change.
    """
    mil = ct.convert(program, convert_to="milinternal", inputs=inputs, outputs=outputs,
                     minimum_deployment_target=target, compute_precision=compute_precision)
    mil.functions["main"].set_output_types(None)
    config = ct.ClassifierConfig(labels, predicted_feature_name=CLASS_LABEL_NAME,
                                 predicted_probabilities_output=PROBABILITIES_NAME)
    return ct.convert(mil, convert_to="mlprogram", classifier_config=config, minimum_deployment_target=target,
                      compute_precision=ct.precision.FLOAT32, compute_units=units, skip_model_load=True)


def _load(artifact: Path):
    import coremltools as ct

    artifact = Path(artifact)
    if not (artifact / "Manifest.json").is_file():
        raise EdgevitError(f"{artifact} is not a Core ML package (no Manifest.json); convert the model again")
    return ct.models.MLModel(str(artifact), skip_model_load=True)


def load(artifact: Path, threads: int | None = None, compute_units: str | None = None):
    """A predictor for one NCHW float32 image, on macOS; image-input models are fed PIL images.

    `threads` is accepted for the common interface; Core ML schedules its own threads.
    """
    import coremltools as ct

    probe = _load(artifact)  # a missing or broken package is a user error before the platform question
    if not RUNS_HERE:
        raise _runtime_unavailable()
    meta = probe.user_defined_metadata
    units = _compute_units(ct, compute_units or meta.get(META_PREFIX + "compute_units", DEFAULT_COMPUTE_UNITS))
    mlmodel = ct.models.MLModel(str(artifact), compute_units=units)
    spec_input = mlmodel.get_spec().description.input[0]
    image_input = spec_input.type.WhichOneof("Type") == "imageType"
    if image_input:
        from PIL import Image

        mean, std = meta.get(META_PREFIX + "mean"), meta.get(META_PREFIX + "std")
        if mean is None or std is None:
            raise EdgevitError(f"{artifact} has an image input but no edgevit mean/std metadata; convert it again")
        mean, std = json.loads(mean), json.loads(std)

    def predict(image: np.ndarray) -> np.ndarray:
        feed = np.asarray(image, dtype=np.float32)[None]
        if image_input:
            pixels = np.rint(to_pixels(feed, mean, std)).astype(np.uint8)[0]
            # uint8 (H, W) -> mode "L", (H, W, 3) -> "RGB", as the package's image input expects
            feed = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else np.ascontiguousarray(pixels.transpose(1, 2, 0)))
        result = mlmodel.predict({spec_input.name: feed})
        return np.asarray(result[OUTPUT_NAME], dtype=np.float32).reshape(-1)

    return predict


def run(artifact: Path, images: np.ndarray, compute_units: str | None = None) -> np.ndarray:
    """Logits (N, classes) from Core ML on macOS, image by image."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise EdgevitError(f"run takes NCHW images, got shape {images.shape}")
    return predict_all(load(artifact, compute_units=compute_units), images)


def _runtime_unavailable():
    from . import RuntimeUnavailable

    return RuntimeUnavailable(f"Core ML models run only on macOS (this is {sys.platform}): the package was built "
                              "and inspected here (I/O, op census, ranks); run the conversion on a Mac to compare "
                              "numerics")


def _describe(features) -> list[dict]:
    described = []
    for feature in features:
        kind = feature.type.WhichOneof("Type")
        if kind == "multiArrayType":
            array = feature.type.multiArrayType
            described.append({"name": feature.name, "kind": "tensor", "shape": list(array.shape),
                              "dtype": _DTYPES.get(array.dataType, str(array.dataType))})
        elif kind == "imageType":
            image = feature.type.imageType
            from coremltools.proto import FeatureTypes_pb2

            space = FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.colorSpace)
            channels = 1 if space.startswith("GRAYSCALE") else 3
            described.append({"name": feature.name, "kind": "image", "shape": [1, channels, image.height, image.width],
                              "dtype": "float16" if space == "GRAYSCALE_FLOAT16" else "uint8", "color": space})
        elif kind == "dictionaryType":
            key = feature.type.dictionaryType.WhichOneof("KeyType")
            described.append({"name": feature.name, "kind": "dictionary", "shape": [],
                              "dtype": f"dict[{'str' if key == 'stringKeyType' else 'int64'}, float64]"})
        else:
            described.append({"name": feature.name, "kind": kind.replace("Type", ""), "shape": [],
                              "dtype": "str" if kind == "stringType" else kind.replace("Type", "")})
    return described


def _walk(block):
    for op in block.operations:
        yield op
        for inner in getattr(op, "blocks", []) or []:
            yield from _walk(inner)


def _is_fp32(var) -> bool:
    from coremltools.converters.mil.mil import types

    return types.is_tensor(var.sym_type) and var.dtype == types.fp32


def _target_name(spec_version: int) -> str | None:
    import coremltools as ct

    names = [name for name, value in ct.target.__members__.items() if int(value) == spec_version]
    return next((name for name in names if name.startswith("iOS")), names[0] if names else None)


def inspect(artifact: Path) -> dict:
    """Spec version, I/O, metadata, MIL op census, maximum tensor rank and weights, without Core ML itself."""
    from coremltools.converters.mil.frontend.milproto.load import load as load_mil
    from coremltools.converters.mil.mil import types

    artifact = Path(artifact)
    mlmodel = _load(artifact)
    spec = mlmodel.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise EdgevitError(f"{artifact} is a {spec.WhichOneof('Type')} model, not an ML Program; convert it again")
    program = load_mil(spec, spec.specificationVersion, mlmodel.weights_dir)
    ops, ranks, weights, labels = Counter(), Counter(), Counter(), None
    for op in _walk(program.functions["main"]):
        ops[op.op_type] += 1
        if op.op_type == "classify":
            labels = [str(label) for label in op.classes.val]
        for var in op.outputs:
            if op.op_type != "const" and types.is_tensor(var.sym_type):
                ranks[len(var.shape)] += 1
            if op.op_type == "const" and isinstance(var.val, np.ndarray) and var.val.size > 1:
                weights[str(var.val.dtype)] += int(var.val.nbytes)
    max_rank = max(ranks, default=0)
    unclean = {op: reason for op, reason in UNCLEAN_OPS.items() if op in ops}
    weight_file = Path(mlmodel.weights_dir) / "weight.bin"
    description = spec.description
    metadata = dict(mlmodel.user_defined_metadata)
    computed = [op for op in ops if op != "const"]
    fp16 = weights.get("float16", 0) > weights.get("float32", 0)
    float32_ops = Counter(op.op_type for op in _walk(program.functions["main"])
                          if op.op_type not in ("const", "cast") and any(map(_is_fp32, op.outputs))) if fp16 else {}
    problems = list(unclean) + ([f"rank {max_rank} tensors"] if max_rank > MAX_RANK else [])
    return {
        "spec_version": spec.specificationVersion,
        "minimum_target": _target_name(spec.specificationVersion),
        "inputs": _describe(description.input),
        "outputs": _describe(description.output),
        "classifier": {"labels_output": description.predictedFeatureName,
                       "probabilities_output": description.predictedProbabilitiesName, "labels": labels}
        if description.predictedFeatureName else None,
        "author": description.metadata.author,
        "short_description": description.metadata.shortDescription,
        "metadata": metadata,
        "compute_precision": "fp16" if fp16 else "fp32",
        "float32_ops": dict(sorted(float32_ops.items())),  # in an fp16 program: the float32 islands
        "ops": dict(sorted(ops.items())),
        "num_ops": sum(ops[op] for op in computed),
        "max_rank": max_rank,
        "rank_histogram": {str(rank): count for rank, count in sorted(ranks.items())},
        "weight_bytes": weight_file.stat().st_size if weight_file.is_file() else 0,
        "const_bytes_by_dtype": dict(sorted(weights.items())),
        "package_bytes": sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file()),
        "unclean_ops": unclean,
        "verdict": "clean: every op is a plain MIL op, tensors of rank <= 5" if not problems else
                   "not clean: " + ", ".join(problems),
        "numerics_run": RUNS_HERE,
        "numerics_reason": None if RUNS_HERE else
        f"Core ML models run only on macOS (this is {sys.platform}); the package was only inspected",
    }
