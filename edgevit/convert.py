"""The main job: model name -> verified bundle(s), one per target.

For each target: put the model in the target's LayerNorm form, convert into a staging directory, run the
artifact in its own runtime on image-like inputs and compare with eager PyTorch, write the manifest, and only
then move the bundle into place. A failed check leaves no bundle behind (or a `.failed` one if asked).
"""
from __future__ import annotations

import multiprocessing
import os
import platform
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import __version__
from .analysis import count_params
from .console import redirect_toolchain_output, toolchain_output_to
from .converters import RuntimeUnavailable, get_target, resolve_targets, target_forms
from .converters.bundle import LABELS, artifact_digest, check_destination, staged_bundle, write_manifest
from .converters.pixels import as_8bit
from .data.labels import labels_for
from .errors import EdgevitError
from .models import create_model
from .verify import compare, judge, reference_logits, verification_inputs

# Core ML's default is fp16 (what the Neural Engine runs); everything else defaults to fp32.
DEFAULT_PRECISION = {"coreml": "fp16"}
RANDOM_INIT_WARNING = ("no weights given: converting a RANDOMLY INITIALISED {variant}. The bundle is fine for "
                       "checking the toolchain and measuring speed, but it predicts nothing. Pass --weights PATH "
                       "or --pretrained.")


@dataclass
class Outcome:
    """What happened for one target."""

    target: str
    precision: str
    status: str  # "ok", "failed" or "skipped"
    bundle: Path | None = None
    seconds: float = 0.0
    size_bytes: int | None = None
    verification: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    error: str | None = None
    toolchain_log: Path | None = None   # what the toolchains printed, when `convert(quiet_toolchains=True)`

    @property
    def summary(self) -> str:
        """One phrase on how far this artifact was checked, for the summary table."""
        if self.status != "ok":
            return self.error or self.status
        verification = self.verification
        if verification.get("status") == "passed":
            metrics = verification["metrics"]
            return (f"verified: cos {metrics['cosine_min']:.6f}, top-1 {metrics['top1_agreement']:.0%}, "
                    f"max err {metrics['max_abs_error']:.1e}")
        return verification.get("reason", verification.get("status", ""))


def bundle_dir(out: Path, variant: str, target: str, precision: str) -> Path:
    return Path(out) / variant / f"{target}-{precision}"


def convert(model: str | nn.Module, targets: str | list[str] = "coreml", out: str | Path = "edgevit-out",
            weights: str | Path | None = None, pretrained: bool = False, precision: str | None = None,
            img_size: int | None = None, num_classes: int | None = None, force: bool = False,
            verify: bool = True, keep_failed: bool = False, verify_samples: int = 8,
            target_options: dict[str, dict] | None = None, parallel: bool = False,
            quantize: str | None = None, calib: str | None = None, calib_samples: int = 256,
            data_dir: str | None = None, float_modules: tuple[str, ...] = (), quiet_toolchains: bool = False,
            log: Callable[[str], None] = lambda message: None) -> list[Outcome]:
    """Convert a model (a variant name, or a model from `edgevit.create_model`) to each target's bundle.

    With several targets and `parallel`, targets convert in worker processes, one per core (spawned: call it
    from under `if __name__ == "__main__":` in a script, as multiprocessing requires).
    `quantize` names a recipe (see `edgevit.quantization.RECIPES`); calibrating recipes take `calib_samples`
    images from the train split of `calib` (fashion-mnist, cifar10, cifar100 or an ImageFolder directory).
    `quiet_toolchains` sends what the toolchains print (warnings, C++ logs, their progress bars) to
    OUT/VARIANT/toolchains.log instead of the terminal; `log` must then write elsewhere than file descriptors 1
    and 2, e.g. to `edgevit.console.console()`, as the CLI does.
    Returns one `Outcome` per target; raises `EdgevitError` only for problems that stop everything (unknown
    model or target, unreadable weights, an output directory that exists without `force`).
    """
    names = resolve_targets(targets)
    if quantize and precision:
        raise EdgevitError("--precision and --quantize are exclusive: a recipe sets the precision (use "
                           "--precision fp16 alone for fp16).")
    precisions = {name: precision or DEFAULT_PRECISION.get(name, "fp32") for name in names}
    plan, unquantizable = _quantization_plan(quantize, names, calib, calib_samples, data_dir, float_modules,
                                             weights, precision)
    names = [name for name in names if name not in unquantizable] if len(names) > 1 else names
    for name in names:
        if plan:
            precisions[name] = plan.recipe(name).precision
    if isinstance(model, str):
        model = create_model(model, pretrained=pretrained, weights=weights, num_classes=num_classes,
                             img_size=img_size)
    variant = getattr(model, "variant", None) or type(model).__name__.lower()
    destinations = {name: bundle_dir(Path(out), variant, name, precisions[name]) for name in names}
    for destination in destinations.values():
        check_destination(destination, force)  # before any slow work
    if plan:
        plan.load_calibration(model.pretrained_cfg, names, log)
    if _weights_source(model) == "random init":
        log("WARNING: " + RANDOM_INIT_WARNING.format(variant=variant))
    cfg = model.pretrained_cfg
    example = torch.zeros(1, *cfg["input_size"])
    images, images_source = verification_inputs(cfg, verify_samples) if verify else (None, None)
    expected = reference_logits(model, images) if verify else None

    labels = labels_for(cfg.get("labels"), cfg["num_classes"])
    jobs = []
    for index, name in enumerate(names, 1):
        prefix = f"[{index}/{len(names)}] {name} {precisions[name]}"
        target = get_target(name)
        if not plan and precisions[name] not in target.PRECISIONS:
            reason = f"{name} supports precision {', '.join(target.PRECISIONS)}, not {precisions[name]}"
            if len(names) == 1:
                raise EdgevitError(reason)
            log(f"{prefix}: skipped ({reason})")
            jobs.append(Outcome(name, precisions[name], "skipped", error=reason))
            continue
        options = dict((target_options or {}).get(name, {}))
        if name == "coreml" and options.get("image_input") and labels:
            options.setdefault("labels", labels)
        jobs.append((model, name, example, destinations[name], precisions[name], options, labels, images,
                     images_source, expected, force, keep_failed, prefix, plan))
    jobs = [Outcome(name, "-", "skipped", error=reason) for name, reason in unquantizable.items()] + jobs
    work = [job for job in jobs if not isinstance(job, Outcome)]
    workers = min(len(work), os.cpu_count() or 1) if parallel else 1
    toolchain_log = _start_toolchain_log(Path(out) / variant, names) if quiet_toolchains and work else None
    if workers <= 1:
        with toolchain_output_to(toolchain_log):
            done = {job[1]: _convert_one(*job, log) for job in work}
    else:
        done = _convert_in_processes(work, workers, log, toolchain_log)
    for outcome in done.values():
        outcome.toolchain_log = toolchain_log
    return [job if isinstance(job, Outcome) else done[job[1]] for job in jobs]


def _start_toolchain_log(directory: Path, targets: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "toolchains.log"
    with open(path, "a") as log:  # appended: `edgevit parity` converts many times into one directory
        log.write(f"# edgevit {__version__} convert {directory.name} --target {' '.join(targets)}, "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}: what the toolchains printed\n")
    return path


def _convert_in_processes(work: list[tuple], workers: int, log, toolchain_log: Path | None) -> dict[str, Outcome]:
    """One process per target, so the slow lowering of one toolchain overlaps the others.

    The model travels to each worker by pickle (spawn, not fork: the toolchains start threads). The workers'
    progress lines come back through a queue handed to each worker as it starts (no manager process: starting
    one costs seconds) and are passed to `log` as they arrive.
    """
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    forward = threading.Thread(target=lambda: [log(m) for m in iter(messages.get, None)], daemon=True)
    forward.start()
    try:
        # the slowest lowering (ExecuTorch's XNNPACK passes) first, so it starts at once
        ordered = sorted(work, key=lambda job: job[1] != "executorch")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                 initargs=(messages, toolchain_log)) as pool:
            futures = {job[1]: pool.submit(_convert_one, *job, _worker_log) for job in ordered}
            return {name: future.result() for name, future in futures.items()}
    finally:
        messages.put(None)
        forward.join()


_worker_messages = None


def _start_worker(messages, toolchain_log: Path | None) -> None:
    global _worker_messages
    _worker_messages = messages
    if toolchain_log is not None:
        redirect_toolchain_output(toolchain_log)  # for the worker's whole life: it only converts


def _worker_log(message: str) -> None:
    _worker_messages.put(message)


def _quantization_plan(quantize, names, calib, calib_samples, data_dir, float_modules, weights=None,
                       precision=None):
    """The plan, and the targets that lack the recipe (an error when it is the only target). A qat.pt of
    `edgevit qat` as weights brings its own plan (recipe qat-int8, its trained fake-quant state)."""
    if not quantize and weights is None:
        return None, {}
    from .quantization import QuantizationPlan

    plan = QuantizationPlan.from_qat(weights, quantize, precision)
    if plan is None and not quantize:
        return None, {}
    plan = plan or QuantizationPlan(quantize, calib_samples=calib_samples, calib_source=calib, data_dir=data_dir,
                                    float_modules=tuple(float_modules))
    unquantizable = {}
    for name in names:
        try:
            plan.recipe(name)
        except EdgevitError as exc:
            if len(names) == 1:
                raise
            unquantizable[name] = str(exc)
    if len(unquantizable) == len(names):
        raise EdgevitError(f"none of the targets offers the recipe '{plan.recipe_name}': "
                           + " ".join(unquantizable.values()))
    return plan, unquantizable


def _convert_one(model, name, example, destination, precision, options, labels, images, images_source,
                 expected, force, keep_failed, prefix, plan, log) -> Outcome:
    target = get_target(name)
    outcome = Outcome(target.NAME, precision, "failed")
    start = time.perf_counter()
    try:
        with staged_bundle(destination, force=force, keep_failed=keep_failed) as staging:
            artifact = staging / target.ARTIFACT
            subject, base_precision = model, precision
            with target_forms(model, target):
                if plan:
                    log(f"{prefix}: quantize ({plan.recipe(name).summary}) ...")
                    subject, extra = plan.model_for(name, model, example)
                    options, base_precision = {**options, **extra}, DEFAULT_PRECISION.get(name, "fp32")
                log(f"{prefix}: export, convert, serialize ...")
                outcome.report = target.convert(subject, example, artifact, precision=base_precision, **options)
                if plan:
                    plan.finish(name, artifact, model)
                    if plan.recipe(name).stage == "artifact":  # rewritten: describe what ships, not its float input
                        outcome.report.update(target.inspect(artifact))
                    outcome.report["quantization"] = plan.manifest(name)
            convert_seconds = time.perf_counter() - start
            if options.get("uint8_input") and images is not None:
                # the artifact sees these images as the 8-bit pixels they round to; so must the reference
                images = as_8bit(images, model.pretrained_cfg["mean"], model.pretrained_cfg["std"])
                expected = reference_logits(model, images)
            outcome.verification = _verify(target, artifact, images, images_source, expected, precision,
                                           outcome.report, prefix, log)
            if plan and subject is not model and images is not None and "metrics" in outcome.verification:
                # the converter's own fidelity: the artifact against the quantized PyTorch graph it came from
                outcome.verification["vs_quantized_graph"] = compare(reference_logits(subject, images, static_batch=True),
                                                                     target.run(artifact, images))
            if labels:
                (staging / LABELS).write_text("\n".join(labels) + "\n")
            outcome.size_bytes, sha256 = artifact_digest(artifact)
            outcome.seconds = time.perf_counter() - start
            failed = outcome.verification.get("status") == "failed"
            write_manifest(staging, _manifest(model, target, precision, options, outcome, sha256, labels,
                                              convert_seconds, "failed" if failed else "ok",
                                              plan.manifest(name) if plan else None))
            if failed:
                raise EdgevitError("verification failed: " + "; ".join(outcome.verification["failures"]))
        outcome.status, outcome.bundle = "ok", destination
        log(f"{prefix}: wrote {destination} ({outcome.size_bytes / 1e6:.2f} MB, {outcome.seconds:.1f} s)")
    except EdgevitError as exc:
        outcome.error, outcome.seconds = str(exc), time.perf_counter() - start
        kept = f"; kept for inspection in {destination}.failed" if keep_failed else ""
        log(f"{prefix}: FAILED: {exc}{kept}")
    return outcome


def _verify(target, artifact, images, images_source, expected, precision, report, prefix, log) -> dict:
    structural = _structural_failures(report)
    if images is None:
        return {"status": "skipped", "reason": "--no-verify", "structural_failures": structural}
    log(f"{prefix}: verifying on {len(images)} {images_source} ...")
    try:
        actual = target.run(artifact, images)
    except RuntimeUnavailable as exc:
        status = "failed" if structural else "not run"
        return {"status": status, "reason": f"numerics not run: {exc}", "inputs": images_source,
                "structural_failures": structural, "failures": structural}
    except Exception as exc:  # the artifact was written but its own runtime rejects it: that is a failed check
        failure = f"the artifact does not run in its runtime: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        return {"status": "failed", "inputs": images_source, "failures": [failure] + structural,
                "structural_failures": structural}
    metrics = compare(expected, actual)
    verdict = judge(metrics, precision)
    failures = verdict.failures + structural
    return {"status": "passed" if not failures else "failed", "inputs": images_source, "metrics": metrics,
            "failures": failures, "structural_failures": structural}


def _structural_failures(report: dict) -> list[str]:
    """Checks that need no runtime: tensors of rank > 5 (Core ML's limit) and ops an export-clean graph lacks."""
    failures = []
    if report.get("max_rank", 0) > 5:
        failures.append(f"tensor of rank {report['max_rank']} (Core ML allows at most 5)")
    if report.get("unclean_ops"):
        failures.append(f"unexpected ops: {report['unclean_ops']}")
    return failures


def _toolchain_versions(target) -> dict:
    return {"torch": torch.__version__, "edgevit": __version__, **target.toolchain_versions()}


def _manifest(model, target, precision, options, outcome, sha256, labels, convert_seconds, status,
              quantization: dict | None = None) -> dict:
    cfg = model.pretrained_cfg
    report = getattr(model, "load_report", None)
    channels, height, width = cfg["input_size"]
    nhwc = bool(options.get("nhwc"))
    image_input = bool(options.get("image_input"))
    uint8_input = bool(options.get("uint8_input"))
    return {
        "status": status,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {"variant": getattr(model, "variant", None), "family": model.family, "arch": getattr(model, "arch", {}),
                  "params": count_params(model)["total"]},
        "weights": {"source": _weights_source(model), "random_init": _weights_source(model) == "random init",
                    "sha256": report.sha256 if report else None, "layout": report.layout if report else None,
                    "notes": report.messages if report else []},
        "target": target.NAME,
        "precision": precision,
        "quantization": quantization,
        "input": {"name": _first_name(outcome.report.get("inputs"), "pixel_values"),
                  "shape": [1, height, width, channels] if nhwc else [1, channels, height, width],
                  "dtype": "uint8 image" if image_input else "uint8" if uint8_input else "float32",
                  "layout": "NHWC" if nhwc else "NCHW",
                  "value_range": "0..255 pixels (normalisation inside the model)" if image_input or uint8_input
                  else "normalised: (pixel / 255 - mean) / std"},
        "preprocessing": {"resize": int(round(height / cfg.get("crop_pct", 1.0))), "crop": [height, width],
                          "crop_pct": cfg.get("crop_pct"), "interpolation": cfg.get("interpolation"),
                          "mean": cfg.get("mean"), "std": cfg.get("std")},
        "outputs": outcome.report.get("outputs"),
        "num_classes": cfg["num_classes"],
        "labels": LABELS if labels else None,
        "options": {k: v for k, v in options.items() if k not in ("labels", "quant_config")},
        "toolchain": _toolchain_versions(target),
        "host": {"platform": platform.platform(), "python": platform.python_version()},
        "artifact": {"file": target.ARTIFACT, "size_bytes": outcome.size_bytes, "sha256": sha256,
                     "convert_seconds": round(convert_seconds, 2)},
        "verification": outcome.verification,
        "report": outcome.report,
    }


def _weights_source(model) -> str:
    return getattr(model, "weights_source", "random init")


def _first_name(values, default: str) -> str:
    return values[0].get("name", default) if values else default
