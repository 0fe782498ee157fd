"""Quantization-aware training (PT2E QAT): fine-tune a trained float model with the target's int8 fake-quant.

    edgevit qat t2t_vit_7 --weights runs/t2t_vit_7/best.pt --target tflite      # -> runs/t2t_vit_7/qat-tflite/qat.pt
    edgevit convert t2t_vit_7 --weights runs/t2t_vit_7/qat-tflite/qat.pt --target tflite   # -> tflite-qat-int8

The model is exported (in train mode, in the target's LayerNorm form, with its exact rewrites: for executorch
the LayerNorm gains and shifts folded into the Linears that read them, computed in the graph from the live
parameters, so the weight fake-quant sees the weights the .pte will hold) and prepared with the target's own PT2E
quantizer in QAT mode, minus the float islands (`islands.quantizable`: only Linear/Conv get fake-quant):
XNNPACK's for executorch; XNNPACK's with symmetric activations for onnx (the zero-point-free QDQ TensorRT's explicit
quantization wants, per-channel symmetric weights like the ORT `int8` recipe); litert-torch's for tflite;
CoreMLQuantizer for coreml. A short, low-LR fine-tune (AdamW, warm-up + cosine, label smoothing, the float run's
augmentation) follows a calibration pass that sets the fake-quant ranges first. Top-1 is measured on the test
split for the float model, the int8 model with the calibrated ranges before fine-tuning, and after each epoch.

`OUT/qat.pt` (default OUT: the weights' folder / qat-TARGET) is a torch.save dict readable with weights_only:

- "state_dict": the fine-tuned float (latent) weights, in the edgevit layout: `create_model(MODEL, weights=qat.pt)`
  builds the float model they belong to (the reference its quantized bundles are verified against);
- "qat_state": the fake-quant state (scales, zero points, observer ranges) of every activation_post_process module
  of the prepared graph, keyed as in its state_dict;
- "edgevit": the training metadata of the float checkpoint with kind "edgevit-qat", metrics (the QAT model's test
  scores) and a "qat" entry: target, recipe "qat-int8", quantizer, LayerNorm form, hyperparameters, seed, before/
  after metrics, the float checkpoint it started from, torch/torchao versions.

`rebuild` re-exports that float model at batch 1, prepares it with the same quantizer (same graph, same module
names), loads the fake-quant state and runs `convert_pt2e`: `edgevit convert MODEL --weights qat.pt --target T` does
that through `QuantizationPlan.from_qat` and converts the result like any graph-quantized model (bundle T-qat-int8).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from edgevit.errors import EdgevitError

from .islands import quantizable
from .pt2e import QuantizedModel, exported_graph, with_float_islands

QAT_RECIPE = "qat-int8"
KIND = "edgevit-qat"
FORMAT = 1
TARGETS = ("executorch", "tflite", "coreml", "onnx")
QUANTIZERS = {
    "executorch": "XNNPACKQuantizer, per-channel symmetric int8 weights, per-tensor affine int8 activations",
    "onnx": "XNNPACKQuantizer with symmetric activations: per-channel symmetric int8 weights, per-tensor symmetric "
            "int8 activations (QDQ for TensorRT explicit quantization)",
    "tflite": "litert-torch PT2EQuantizer, per-channel symmetric int8 weights, per-tensor affine int8 activations",
    "coreml": "CoreMLQuantizer (w8a8: symmetric per-channel int8 weights, uint8 activations), iOS 17+",
}
# the post-training recipe of each target: the same quantizer, calibrated only
PTQ_RECIPES = {"executorch": "int8", "onnx": "int8", "tflite": "int8", "coreml": "w8a8"}
FOLD_QUANTIZE = {"tflite": False}  # litert-torch reads the quantize/dequantize pairs itself
CONVERTER_OPTIONS = {"coreml": {"minimum_target": "iOS17"}}
CALIBRATION_BATCHES = 8  # no-grad batches that set the fake-quant ranges before the first weight update
DEFAULTS = {"epochs": 2, "lr": 1e-5, "batch_size": 64, "weight_decay": 0.05, "label_smoothing": 0.1, "seed": 0}


@dataclass
class QatResult:
    checkpoint: Path  # OUT/qat.pt
    metrics: dict  # the content of OUT/metrics.json
    out: Path
    step_losses: list[float] = dataclasses.field(default_factory=list)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- quantizers and the prepared graph -------------------------------------------------------------------------

def _symmetric_activations(config):
    """An XNNPACK QAT config whose activation specs are per-tensor symmetric (zero point 0), weights unchanged."""
    def symmetric(spec):
        return None if spec is None else dataclasses.replace(spec, qscheme=torch.per_tensor_symmetric)
    return dataclasses.replace(config, input_activation=symmetric(config.input_activation),
                               output_activation=symmetric(config.output_activation))


def qat_quantizer(target: str, batch_norm: bool = True):
    """The target's PT2E quantizer in QAT mode (fake-quant modules instead of observers). `batch_norm=False`
    (the model has none) drops XNNPACK's QAT-only conv+BN patterns: each one is exported to match it, seconds of
    work per prepare that can find nothing."""
    _check_target(target)
    if target in ("executorch", "onnx"):
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer, get_symmetric_quantization_config)

        from .recipes import _linear_and_conv

        config = get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
        quantizer = XNNPACKQuantizer()
        if not batch_norm:
            quantizer.SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if not p.is_qat]
        return _linear_and_conv(quantizer, _symmetric_activations(config) if target == "onnx" else config)
    if target == "tflite":
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
        # its QAT-only conv+BN(+ReLU) annotators export a pattern *function*, which torchao 0.18's
        # torch.export rejects ("Expected `mod` to be an instance of torch.nn.Module"): without them a conv is
        # annotated as a plain conv and a following BatchNorm (only CrossViT's multi-conv stem has one) stays float
        quantizer.STATIC_QAT_ONLY_OPS = []
        return quantizer
    from .recipes import coreml_quantizer  # CoreMLQuantizer annotates with FakeQuantize: QAT-ready as it is

    return coreml_quantizer()


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise EdgevitError(f"unknown QAT target '{target}'; choose one of: {', '.join(TARGETS)}")


@contextmanager
def no_stochastic_depth(model: nn.Module) -> Iterator[nn.Module]:
    """DropPath off while tracing: `move_exported_model_to_eval` turns dropout off but not a traced DropPath's
    random mask, which would stay in the converted graph (NesT trains with drop path 0.2-0.5)."""
    from edgevit.models.layers import DropPath

    saved = [(module, module.drop_prob) for module in model.modules() if isinstance(module, DropPath)]
    for module, _ in saved:
        module.drop_prob = 0.0
    try:
        yield model
    finally:
        for module, rate in saved:
            module.drop_prob = rate


def prepare(model: nn.Module, example: torch.Tensor, target: str, float_modules=()) -> torch.fx.GraphModule:
    """Export `model` in train mode (stochastic depth off) in the target's LayerNorm form and insert the target's
    fake-quant modules (Linear/Conv only). The graph shares its parameters with `model`, left in eval mode."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from edgevit.converters import get_target, target_forms

    batch_norm = any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules())
    quantizer = with_float_islands(qat_quantizer(target, batch_norm), quantizable(float_modules))
    try:
        with target_forms(model, get_target(target)), no_stochastic_depth(model):
            graph = exported_graph(model.train(), example, target, trainable=True)
        prepared = prepare_qat_pt2e(graph, quantizer)
        prepared.meta["rewrites"] = graph.meta["rewrites"]
        return prepared
    except EdgevitError:
        raise
    except Exception as exc:
        raise EdgevitError(f"QAT preparation for {target} failed: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    finally:
        model.eval()


def fake_quant_state(prepared: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    """The state of the prepared graph's fake-quant modules (scales, zero points, observed ranges, enabled flags),
    keyed as in its state_dict. Not the scalar constants the quantizers lift into tensors (`_tensor_constant_N`):
    the rebuild makes those itself."""
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase
    from torchao.quantization.pt2e.observer import ObserverBase

    state = {}
    for name, module in prepared.named_children():
        if isinstance(module, (FakeQuantizeBase, ObserverBase)):
            state.update({f"{name}.{key}": value.detach().cpu().clone() for key, value in module.state_dict().items()})
    return state


def converted(prepared: torch.fx.GraphModule, target: str, copy_first: bool = True) -> torch.fx.GraphModule:
    """convert_pt2e of the prepared graph (of a copy by default, so training can go on), in eval mode."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    graph = copy.deepcopy(prepared) if copy_first else prepared
    move_exported_model_to_eval(graph)
    return convert_pt2e(graph, fold_quantize=FOLD_QUANTIZE.get(target, True))


def rebuild(model: nn.Module, example: torch.Tensor, target: str, qat_state: dict, float_modules=(),
            origin: str = "qat.pt", trained_rewrites: dict | None = None) -> QuantizedModel:
    """The quantized model for conversion: `model` (holding the fine-tuned float weights) prepared at `example`'s
    batch size like during QAT, with the trained fake-quant state loaded, converted. `trained_rewrites`: the graph
    rewrites the QAT graph had (qat.pt's metadata); the fake-quant ranges fit only a graph rewritten alike."""
    prepared = prepare(model, example, target, float_modules)
    if trained_rewrites is not None and prepared.meta["rewrites"] != trained_rewrites:
        raise EdgevitError(f"{origin} was trained on a {target} graph with other rewrites "
                           f"({trained_rewrites or 'none'}) than this edgevit makes ({prepared.meta['rewrites']}), "
                           "so its fake-quant ranges do not fit; run `edgevit qat` again here.")
    expected = set(fake_quant_state(prepared))
    if expected != set(qat_state):
        missing, unexpected = sorted(expected - set(qat_state)), sorted(set(qat_state) - expected)
        raise EdgevitError(f"{origin}: its fake-quant state does not fit the {target} QAT graph rebuilt here "
                           f"({len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. "
                           f"{unexpected[:3]}). It was written by another torch/torchao or edgevit version, or for "
                           "another --keep-float; run `edgevit qat` again here.")
    try:
        prepared.load_state_dict(qat_state, strict=False)
        graph = converted(prepared, target, copy_first=False)
    except Exception as exc:
        raise EdgevitError(f"{origin}: cannot load its fake-quant state: {type(exc).__name__}: {exc}") from exc
    quantized = QuantizedModel(graph, model, QAT_RECIPE)
    quantized.rewrites = prepared.meta.get("rewrites", {})
    return quantized


# --- qat.pt ------------------------------------------------------------------------------------------------------

def read_qat(path) -> dict | None:
    """The metadata of a qat.pt (None for any other file, including a float training checkpoint)."""
    from edgevit.models.checkpoint import read_metadata

    if path is None:
        return None
    metadata = read_metadata(path)
    return metadata if metadata and metadata.get("kind") == KIND else None


def float_origin(path) -> Path | None:
    """The float checkpoint a qat.pt was fine-tuned from, when it is still where QAT read it and unchanged."""
    from edgevit.models.checkpoint import sha256_of

    metadata = read_qat(path)
    origin = Path(metadata["qat"].get("from_checkpoint", "")) if metadata else None
    if origin is None or not origin.is_file() or sha256_of(origin) != metadata["qat"].get("from_sha256"):
        return None
    return origin


def load_qat_state(path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        state = obj["qat_state"]
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file gets the same advice
        raise EdgevitError(f"cannot read the fake-quant state of {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or not state:
        raise EdgevitError(f"{path} holds no fake-quant state; run `edgevit qat` again.")
    return state


def check_target(metadata: dict, target: str, path) -> None:
    trained_for = metadata["qat"]["target"]
    if target != trained_for:
        raise EdgevitError(f"{path} was quantization-aware trained for {trained_for} (its quantizer, LayerNorm form "
                           f"and int8 scheme); it converts to {trained_for} only. For {target}, run `edgevit qat "
                           f"{metadata.get('variant')} --weights FLOAT.pt --target {target}`.")


def recipe_for(metadata: dict, target: str, path):
    """The Recipe a qat.pt converts with (a graph recipe without calibration)."""
    from .recipes import Recipe

    check_target(metadata, target, path)
    return Recipe(QAT_RECIPE, target, "graph", QAT_RECIPE,
                  f"quantization-aware trained int8 ({QUANTIZERS[target]})", False,
                  dict(CONVERTER_OPTIONS.get(target, {})))


def manifest_entry(metadata: dict, path) -> dict:
    qat = metadata["qat"]
    before, after = qat["metrics"]["before"], qat["metrics"]["after"]
    return {"qat": True, "checkpoint": str(path), "from_checkpoint": qat.get("from_checkpoint"),
            "quantizer": qat.get("quantizer"), "data": qat.get("data"), "epochs": qat.get("epochs"),
            "lr": qat.get("lr"), "train_samples": qat.get("train_samples"), "seed": qat.get("seed"),
            "test_samples": qat["metrics"].get("test_samples"),
            "top1_float": before["float"]["top1"], "top1_int8_calibrated": before["int8"]["top1"],
            "top1_qat": after["int8"]["top1"]}


# --- training ----------------------------------------------------------------------------------------------------

def _static_batches(images, cfg: dict, batch_size: int, drop_last: bool):
    """batches() at a fixed size: the graph is exported for one batch size; a short last batch is zero-padded
    (evaluation, `count` tells how many rows are real) or dropped (training)."""
    from edgevit.data.datasets import batches

    for x, y in batches(images, cfg, batch_size):
        count = len(y)
        if count < batch_size:
            if drop_last:
                return
            x = torch.cat([x, x.new_zeros(batch_size - count, *x.shape[1:])])
        yield x, y, count


@torch.no_grad()
def evaluate_static(graph: nn.Module, images, cfg: dict, batch_size: int, device: torch.device,
                    desc: str) -> dict:
    """Cross-entropy, top-1 and top-5 (percent) of a fixed-batch graph over an ImageSet."""
    from edgevit.progress import progress_bar

    k = min(5, cfg["num_classes"])
    loss_sum, top1, topk, seen = 0.0, 0, 0, 0
    with progress_bar(total=math.ceil(len(images) / batch_size), desc=desc, unit="batch") as bar:
        for x, y, count in _static_batches(images, cfg, batch_size, drop_last=False):
            logits = graph(x.to(device)).float()[:count].cpu()
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            best = logits.topk(k, dim=1).indices
            top1 += int((best[:, 0] == y).sum())
            topk += int((best == y[:, None]).any(dim=1).sum())
            seen += count
            bar.update(1)
    return {"test_loss": round(loss_sum / seen, 5), "top1": round(100.0 * top1 / seen, 4),
            "top5": round(100.0 * topk / seen, 4)}


def _rounded(scores: dict) -> dict:
    return {key: round(value, 5) for key, value in scores.items()}


DISTILL_LOSS = "distillation (cross-entropy against the float model's softmax on the same batch)"


def _soft_targets(teacher: nn.Module, pairs, device: torch.device):
    """(x, labels) batches -> (x, the teacher's class probabilities for x): CrossEntropyLoss takes them as targets."""
    for x, _ in pairs:
        with torch.no_grad():  # not around the yield: the student's step would run without gradients
            targets = torch.softmax(teacher(x.to(device)).float(), dim=1)
        yield x, targets


def qat(model_name: str, weights: str | os.PathLike, target: str, data: str | None = None, *,
        data_dir: str | os.PathLike | None = None, epochs: int | None = None, lr: float | None = None,
        batch_size: int | None = None, train_samples: int | None = None, eval_samples: int | None = None,
        seed: int | None = None, device: str = "auto", out: str | os.PathLike | None = None, force: bool = False,
        float_modules=(), distill: bool = True, log: Callable[[str], None] | None = _stderr) -> QatResult:
    """Quantization-aware fine-tuning of the float model `weights` (a `best.pt` of `edgevit train`) for `target`.

    `data` defaults to what the float model was trained on; `train_samples` / `eval_samples` take class-balanced
    subsets of the train / test split. Writes OUT/qat.pt and OUT/metrics.json (OUT defaults to the weights' folder
    / qat-TARGET; an existing qat.pt is refused unless `force`). Deterministic for a seed on the CPU.
    `distill` (default): the loss is the cross-entropy against the float model's own predictions on the same
    (augmented) batch, so fine-tuning learns to undo the quantization error, not to move the float model; False:
    against the labels, with label smoothing, like `edgevit train`.
    """
    from edgevit.data.datasets import balanced_indices, check_compatible, load_images
    from edgevit.models import create_model
    from edgevit.models.registry import resolve_name
    from edgevit.progress import progress_bar
    from edgevit.train import (NO_FLIP_SOURCES, WARMUP_FRACTION, _atomic_save, _param_groups, _write_json, run_epoch,
                               augment_images, evaluate, resolve_device, warmup_cosine)
    from torchao.quantization.pt2e import move_exported_model_to_train

    from edgevit import __version__

    log = log or (lambda message: None)
    _check_target(target)
    settings = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed}
    settings = {key: DEFAULTS[key] if value is None else value for key, value in settings.items()}
    for key, low in (("epochs", 1), ("batch_size", 1)):
        if settings[key] < low:
            raise EdgevitError(f"{key.replace('_', ' ')} must be at least {low}, got {settings[key]}")
    if not settings["lr"] > 0:
        raise EdgevitError(f"learning rate must be positive, got {settings['lr']}")
    for key, value in (("train samples", train_samples), ("eval samples", eval_samples)):
        if value is not None and value < 1:
            raise EdgevitError(f"{key} must be at least 1, got {value}")
    weights = Path(weights)
    if not weights.is_file():
        raise EdgevitError(f"checkpoint not found: {weights}")
    from edgevit.models.checkpoint import read_metadata, sha256_of

    trained = read_metadata(weights)
    if trained and trained.get("kind") == KIND:
        raise EdgevitError(f"{weights} is already a QAT checkpoint (for {trained['qat']['target']}); QAT starts from "
                           "the float model: pass the best.pt of `edgevit train`.")
    if not trained or trained.get("kind") != "edgevit-train":
        raise EdgevitError(f"{weights} is not a trained edgevit checkpoint: QAT fine-tunes a float model trained by "
                           f"`edgevit train` (its best.pt records the architecture, data and preprocessing). Run "
                           f"`edgevit train {model_name}` first, then `edgevit qat {model_name} --weights "
                           "runs/MODEL/best.pt`.")
    name = resolve_name(model_name)
    out_dir = Path(out) if out is not None else weights.parent / f"qat-{target}"
    qat_path, metrics_path = out_dir / "qat.pt", out_dir / "metrics.json"
    if qat_path.exists() and not force:
        raise EdgevitError(f"{qat_path} exists; pass --force to replace it, or choose another --out.")
    data = str(data) if data is not None else trained.get("data") or "fashion-mnist"
    dev = resolve_device(device)
    from edgevit.converters import forms_of, get_target

    forms = forms_of(get_target(target))  # fails early when the target's toolchain is missing
    qat_quantizer(target)

    train_set = load_images(data, "train", data_dir)
    eval_set = load_images(data, "test", data_dir)
    if train_samples is not None:
        train_set = train_set.subset(balanced_indices(train_set.labels, min(train_samples, len(train_set)),
                                                      settings["seed"]))
    if eval_samples is not None:
        eval_set = eval_set.subset(balanced_indices(eval_set.labels, min(eval_samples, len(eval_set)),
                                                    settings["seed"]))

    torch.manual_seed(settings["seed"])
    np.random.seed(settings["seed"])
    model = create_model(name, weights=weights).to(dev)
    cfg = model.pretrained_cfg
    check_compatible(train_set, cfg["num_classes"], cfg["input_size"][0])
    check_compatible(eval_set, cfg["num_classes"], cfg["input_size"][0])
    batch = min(settings["batch_size"], len(train_set))
    steps_per_epoch = len(train_set) // batch
    total_steps = steps_per_epoch * settings["epochs"]
    pad = max(1, min(train_set.images.shape[1:3]) // 14)
    flip = data not in NO_FLIP_SOURCES
    log(f"QAT of {name} ({weights}) for {target}: {QUANTIZERS[target]}; LayerNorm {forms['layer_norm']} form, "
        f"convs {forms['conv']}; {len(train_set)} {train_set.name} images x {settings['epochs']} epoch(s) at batch "
        f"{batch}, lr {settings['lr']:g}, loss {'distillation from the float model' if distill else 'labels'}, on "
        f"{dev}; testing on {len(eval_set)} {eval_set.name} images")

    previous_determinism = (torch.are_deterministic_algorithms_enabled(),
                            torch.is_deterministic_algorithms_warn_only_enabled())
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    started = time.perf_counter()
    step_losses: list[float] = []
    history: list[dict] = []
    try:
        before_float = _rounded(evaluate(model, eval_set, cfg, batch, dev, desc="testing float"))
        log(f"float model: top-1 {before_float['top1']:.2f}%, top-5 {before_float['top5']:.2f}%")
        prepared = prepare(model, torch.zeros(batch, *cfg["input_size"], device=dev), target, float_modules)

        # the fake-quant ranges start from a calibration pass (no weight update), as PTQ would set them
        calib_rng = np.random.default_rng([settings["seed"], 0])
        calib_set = train_set.subset(calib_rng.permutation(len(train_set))[:CALIBRATION_BATCHES * batch])
        move_exported_model_to_train(prepared)
        with torch.no_grad(), progress_bar(total=len(calib_set) // batch, desc="calibrate", unit="batch") as bar:
            for x, _, _ in _static_batches(calib_set, cfg, batch, drop_last=True):
                prepared(x.to(dev))
                bar.update(1)
        before_int8 = evaluate_static(converted(prepared, target), eval_set, cfg, batch, dev,
                                      desc="testing int8 (calibrated)")
        log(f"int8 with calibrated ranges, before fine-tuning: top-1 {before_int8['top1']:.2f}%, top-5 "
            f"{before_int8['top5']:.2f}%")

        # the teacher is a frozen copy: `prepared` shares and trains the parameters of `model`
        teacher = copy.deepcopy(model).eval().requires_grad_(False) if distill else None
        optimizer = torch.optim.AdamW(_param_groups(prepared, DEFAULTS["weight_decay"]), lr=settings["lr"])
        warmup = max(1, round(WARMUP_FRACTION * total_steps))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, max(total_steps, 1)))
        criterion = nn.CrossEntropyLoss(label_smoothing=0.0 if distill else DEFAULTS["label_smoothing"])
        after_int8 = before_int8
        for epoch in range(1, settings["epochs"] + 1):
            epoch_start = time.perf_counter()
            rng = np.random.default_rng([settings["seed"], epoch])
            epoch_set = train_set.subset(rng.permutation(len(train_set)))
            epoch_set.images = augment_images(epoch_set.images, rng, pad, flip)
            move_exported_model_to_train(prepared)
            pairs = ((x, y) for x, y, _ in _static_batches(epoch_set, cfg, batch, drop_last=True))
            train_loss, losses = run_epoch(prepared, _soft_targets(teacher, pairs, dev) if distill else pairs,
                                           criterion, optimizer, scheduler, dev,
                                           f"QAT epoch {epoch}/{settings['epochs']}", steps_per_epoch,
                                           f"QAT at epoch {epoch}")
            step_losses += losses
            after_int8 = evaluate_static(converted(prepared, target), eval_set, cfg, batch, dev,
                                         desc=f"testing QAT epoch {epoch}")
            entry = {"epoch": epoch, "train_loss": round(train_loss, 5), **after_int8,
                     "lr": scheduler.get_last_lr()[0], "seconds": round(time.perf_counter() - epoch_start, 2)}
            history.append(entry)
            log(f"QAT epoch {epoch}/{settings['epochs']}: train loss {entry['train_loss']:.4f}, int8 top-1 "
                f"{entry['top1']:.2f}%, top-5 {entry['top5']:.2f}%, {entry['seconds']:.1f} s")
        qat_state = fake_quant_state(prepared)
        trained_params = prepared.state_dict()
        float_state = {key: (trained_params[key] if key in trained_params else value).detach().cpu().clone()
                       for key, value in model.state_dict().items()}
        # the fine-tuned float weights alone: tells a quantization loss from a fine-tuning one
        model.load_state_dict(float_state)
        after_float = _rounded(evaluate(model, eval_set, cfg, batch, dev, desc="testing fine-tuned float"))
    finally:
        if dev.type == "cpu":
            torch.use_deterministic_algorithms(previous_determinism[0], warn_only=previous_determinism[1])

    seconds = round(time.perf_counter() - started, 2)
    import torchao

    qat_metrics = {"before": {"float": before_float, "int8": before_int8}, "after": {"int8": after_int8, "float": after_float},
                   "test": eval_set.name, "test_samples": len(eval_set), "epochs": history}
    metadata = {**trained, "format": FORMAT, "kind": KIND, "edgevit_version": __version__,
                "metrics": {key: after_int8[key] for key in ("top1", "top5", "test_loss")},
                "qat": {"target": target, "recipe": QAT_RECIPE, "quantizer": QUANTIZERS[target],
                        "layer_norm": forms["layer_norm"], "conv": forms["conv"],
                        "graph_rewrites": prepared.meta["rewrites"], "float_modules": list(float_modules),
                        "data": data,
                        "train": train_set.name, "train_samples": len(train_set), "epochs": settings["epochs"],
                        "lr": settings["lr"], "batch_size": batch, "weight_decay": DEFAULTS["weight_decay"],
                        "loss": DISTILL_LOSS if distill else "labels",
                        "label_smoothing": 0.0 if distill else DEFAULTS["label_smoothing"],
                        "calibration_batches": CALIBRATION_BATCHES,
                        "seed": settings["seed"], "device": str(dev), "seconds": seconds,
                        "from_checkpoint": str(weights), "from_sha256": sha256_of(weights),
                        "from_metrics": trained.get("metrics"), "metrics": qat_metrics,
                        "torch": str(torch.__version__), "torchao": str(getattr(torchao, "__version__", None))}}
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_save({"state_dict": float_state, "qat_state": qat_state, "edgevit": metadata}, qat_path)
    metrics = {"model": name, "target": target, "checkpoint": str(qat_path), **metadata["qat"]}
    _write_json(metrics, metrics_path)
    log(f"top-1: float {before_float['top1']:.2f}% -> int8 calibrated {before_int8['top1']:.2f}% -> QAT "
        f"{after_int8['top1']:.2f}% (its float weights alone: {after_float['top1']:.2f}%; {seconds:.0f} s); wrote "
        f"{qat_path}")
    return QatResult(checkpoint=qat_path, metrics=metrics, out=out_dir, step_losses=step_losses)


def load(path, model_name: str | None = None) -> tuple[nn.Module, QuantizedModel]:
    """(float model with the fine-tuned weights, quantized model at batch 1) from a qat.pt, on the CPU."""
    from edgevit.models import create_model

    metadata = read_qat(path)
    if metadata is None:
        raise EdgevitError(f"{path} is not a QAT checkpoint (written by `edgevit qat`).")
    model = create_model(model_name or metadata["variant"], weights=path)
    qat_info = metadata["qat"]
    quantized = rebuild(model, torch.zeros(1, *model.pretrained_cfg["input_size"]), qat_info["target"],
                        load_qat_state(path), qat_info.get("float_modules") or (), origin=str(path),
                        trained_rewrites=qat_info.get("graph_rewrites", {}))
    return model, quantized


def summary(metrics: dict) -> str:
    """The CLI's result line, and advice when fine-tuning lost to its own calibrated start."""
    m = metrics["metrics"]
    line = (f"top-1 float {m['before']['float']['top1']:.2f}% -> int8 calibrated {m['before']['int8']['top1']:.2f}% "
            f"-> QAT {m['after']['int8']['top1']:.2f}% (fine-tuned float {m['after']['float']['top1']:.2f}%) on "
            f"{m['test_samples']} {m['test']} images")
    if m["after"]["int8"]["top1"] < m["before"]["int8"]["top1"]:
        ptq = PTQ_RECIPES[metrics["target"]]
        line += (f"\nQAT ended below its calibrated start: on these images the post-training recipe (`edgevit convert "
                 f"{metrics['model']} --target {metrics['target']} --quantize {ptq} --calib ...`) is the better "
                 "artifact; or fine-tune longer (--epochs, --train-samples)")
    return line


__all__ = ["QAT_RECIPE", "QatResult", "float_origin", "load", "qat", "qat_quantizer", "read_qat", "rebuild"]
