"""`bench()`: bundles (or model names) in, one report out, for whichever device runs them."""
from __future__ import annotations

import functools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgevitError
from . import host
from .environment import host_environment
from .measurement import RUNTIMES, new_measurement
from .ssh import SshTarget

DEVICE_TARGETS = {"host": ("executorch", "tflite", "onnx") + (("coreml",) if sys.platform == "darwin" else ()),
                  "android": ("executorch", "tflite"), "jetson": ("onnx",), "ios": ("coreml",)}
PARITY_FILE = "parity.json"  # written into a bundle by `edgevit parity`; bench shows its top-1 drop
IOS_MESSAGE = ("iOS benchmarks need macOS, Xcode and a connected iPhone; this harness cannot run them here. "
               "Until the sample app's benchmark mode lands, open the bundle's model.mlpackage in Xcode and use its "
               "Performance report (Xcode > model > Performance > +), or run `edgevit bench BUNDLE --device host` "
               "on a Mac to time Core ML there.")


@dataclass
class Device:
    kind: str              # host | android | jetson | ios
    address: str | None    # android serial, jetson USER@HOST[:PORT], ios UDID

    @classmethod
    def parse(cls, spec: str) -> Device:
        kind, _, address = (spec or "host").partition(":")
        if kind not in DEVICE_TARGETS:
            raise EdgevitError(f"unknown device '{spec}'; use host, android[:SERIAL], jetson:USER@HOST or ios[:UDID].")
        if kind == "jetson" and not address:
            raise EdgevitError("a Jetson is reached over ssh: write --device jetson:USER@HOST.")
        return cls(kind, address or None)

    def __str__(self) -> str:
        return self.kind + (f":{self.address}" if self.address else "")


def default_cache() -> Path:
    root = os.environ.get("EDGEVIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgevit")
    return Path(root) / "bundles"


def resolve_bundles(items, device: Device, targets=None, cache: str | os.PathLike | None = None,
                    img_size: int | None = None, log=print) -> list:
    """Bundles for each item: a bundle directory as is; a model name converted once into the bundle cache
    (random weights: latency does not depend on them), at its default input size or `img_size`."""
    from ..convert import bundle_dir, convert, DEFAULT_PRECISION
    from ..converters.bundle import read_bundle
    from ..models import resolve_name

    if not items:
        raise EdgevitError("name at least one bundle directory or model to benchmark.")
    runnable = DEVICE_TARGETS[device.kind]
    wanted = list(targets) if targets else [target for target in runnable if target != "coreml"] or list(runnable)
    bundles, cache = [], Path(cache) if cache else default_cache()
    cache = cache / f"img{img_size}" if img_size else cache
    for item in items:
        path = Path(item)
        if path.exists():
            bundles.append(read_bundle(path))
            continue
        try:
            variant = resolve_name(str(item))
        except EdgevitError as exc:
            raise EdgevitError(f"'{item}' is neither a bundle directory nor a model: {exc}") from None
        missing = [t for t in wanted if not (bundle_dir(cache, variant, t, DEFAULT_PRECISION.get(t, "fp32"))
                                              / "manifest.json").is_file()]
        if missing:
            log(f"converting {variant} to {', '.join(missing)} into the bundle cache {cache} (once)")
            failed = [o for o in convert(variant, missing, out=cache, img_size=img_size, parallel=True, log=log) if o.status != "ok"]
            if failed:
                raise EdgevitError(f"converting {variant} failed: " + "; ".join(f"{o.target}: {o.error}" for o in failed))
        bundles += [read_bundle(bundle_dir(cache, variant, t, DEFAULT_PRECISION.get(t, "fp32"))) for t in wanted]
    wrong = [b for b in bundles if b.target not in runnable]
    if wrong:
        raise EdgevitError(f"{device.kind} cannot run " + ", ".join(f"{b.path} ({b.target})" for b in wrong)
                           + f"; it runs {', '.join(runnable)} bundles.")
    failed = [b for b in bundles if b.manifest.get("status") != "ok"]
    if failed:
        raise EdgevitError("these bundles failed verification when converted; fix them before timing them: "
                           + ", ".join(str(b.path) for b in failed))
    return bundles


def display_name(bundle) -> str:
    return f"{bundle.manifest['model']['variant']}/{bundle.path.name}"


def eager_spec(bundle) -> dict:
    shape, layout = bundle.manifest["input"]["shape"], bundle.manifest["input"].get("layout", "NCHW")
    height = shape[1] if layout == "NHWC" else shape[2]
    channels = shape[3] if layout == "NHWC" else shape[1]
    return {"variant": bundle.manifest["model"]["variant"], "img_size": height,
            "num_classes": bundle.manifest.get("num_classes"), "in_chans": channels}


def top1_drop(bundle) -> float | None:
    path = bundle.path / PARITY_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("top1_drop")
    except json.JSONDecodeError:
        return None


@functools.lru_cache(maxsize=None)
def gmacs(variant: str, img_size: int | None, num_classes: int | None, in_chans: int | None = None) -> float | None:
    """Multiply-accumulates of the model behind a bundle, counted on the meta device (no memory, no weights)."""
    import torch

    from ..analysis import count_macs
    from ..models import build_model

    try:
        with torch.device("meta"):
            model = build_model(variant, img_size=img_size, num_classes=num_classes, in_chans=in_chans)
        return count_macs(model) / 1e9
    except Exception:  # noqa: BLE001 - a missing figure only drops the fraction-of-peak column
        return None


def bench(items, device: str = "host", warmup: int = 10, iters: int = 50, threads: int | None = None,
          runners=(), targets=None, img_size: int | None = None, baseline: bool = True, cache=None, ssh_options=(),
          remote_dir: str | None = None, chunk: int = 5, log=lambda message: None) -> dict:
    """Time bundles (or models, converted first) on a device; returns the report (see `report.write_report`).

    On the host every bundle and the eager PyTorch baseline run in their own worker process, taking turns of
    `chunk` iterations so that a noisy machine slows them alike. `threads` defaults to the device's cores.
    """
    if iters < 1 or warmup < 0:
        raise EdgevitError("--iters must be at least 1 and --warmup at least 0.")
    target_device = Device.parse(device)
    if target_device.kind == "ios":
        raise EdgevitError(IOS_MESSAGE)
    bundles = resolve_bundles(items, target_device, targets, cache, img_size, log)
    name = str(target_device)

    def skeleton(bundle, runtime):
        measurement = new_measurement(display_name(bundle), name, threads, bundle=bundle, runtime=runtime)
        measurement.update(top1_drop=top1_drop(bundle), gmacs=gmacs(**eager_spec(bundle)))
        return measurement

    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if target_device.kind == "host":
        measurements, environment = _bench_host(bundles, warmup, iters, threads or os.cpu_count(), baseline,
                                                skeleton, chunk, log)
    elif target_device.kind == "jetson":
        from . import jetson

        board = SshTarget.parse(target_device.address, ssh_options)
        runner = next(iter(runners), None)
        measurements, environment = jetson.measure(bundles, board, runner, warmup, iters, threads, skeleton, log,
                                                   remote_dir or jetson.REMOTE_ROOT)
    else:
        from . import android

        measurements, environment = android.measure(bundles, target_device.address, runners, warmup, iters,
                                                    threads, skeleton, log)
    _add_fraction_of_peak(measurements, environment.get("matmul_peak_gflops"))
    return {"schema_version": 1, "created": started, "command": None, "device": name,
            "environment": environment,
            "settings": {"warmup": warmup, "iters": iters, "threads": threads or environment.get("cores"),
                         "interleaved": target_device.kind == "host" or "edgevit" in str(next(iter(runners), "")),
                         "chunk": chunk},
            "measurements": measurements}


def _bench_host(bundles, warmup, iters, threads, baseline, skeleton, chunk, log):
    coreml = [b for b in bundles if b.target == "coreml" and sys.platform != "darwin"]
    jobs = [host.Job(skeleton(b, RUNTIMES[b.target]), {"bundle": str(b.path)}) for b in bundles if b not in coreml]
    if baseline:
        for spec in _registered_models(bundles):
            measurement = new_measurement(f"{spec['variant']}/pytorch-eager", "host", threads, variant=spec["variant"],
                                          target="pytorch", precision="fp32", runtime="pytorch-eager")
            measurement["gmacs"] = gmacs(**spec)
            jobs.append(host.Job(measurement, {"eager": spec}))
    environment = host_environment()
    log("measuring the host's fp32 matmul peak")
    environment["matmul_peak_gflops"] = host.matmul_peak(host.LOCAL_WORKER, threads)
    measurements = host.measure(jobs, host.LOCAL_WORKER, warmup, iters, threads, chunk, log)
    for bundle in coreml:
        skipped = skeleton(bundle, "coreml")
        skipped.update(status="skipped", error="Core ML runs only on macOS; this host is " + sys.platform)
        measurements.append(skipped)
    return measurements, environment


def _registered_models(bundles) -> list[dict]:
    """One eager baseline per distinct model; models built outside the registry have no name to rebuild from."""
    from ..models import get_variant

    specs = {json.dumps(eager_spec(b), sort_keys=True) for b in bundles}
    registered = []
    for spec in map(json.loads, sorted(specs)):
        try:
            get_variant(spec["variant"] or "")
        except EdgevitError:
            continue
        registered.append(spec)
    return registered


def _add_fraction_of_peak(measurements, peak_gflops) -> None:
    for measurement in measurements:
        median = (measurement["latency_ms"] or {}).get("median")
        if peak_gflops and median and measurement["gmacs"]:
            measurement["fraction_of_peak"] = 2 * measurement["gmacs"] / (median / 1e3) / peak_gflops
