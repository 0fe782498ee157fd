"""The host runner: one process holding one model in one runtime, timed on command.

    python -m edgevit.bench.worker        # speaks JSON lines on stdin/stdout

The harness starts one worker per measurement (locally, or on a board over ssh), so every runtime keeps its
own thread pool and import side effects, and asks the workers in turn for a few iterations at a time, so a
noisy machine slows every measurement alike. Commands, one JSON object per line:

    {"cmd": "load", "bundle": PATH, "threads": N}                  -> load_ms, first_inference_ms, rss
    {"cmd": "load", "eager": {"variant": ..., "img_size": ..., "num_classes": ...}, "threads": N}
    {"cmd": "run", "iters": K}                                     -> samples_ms, peak_rss_mb
    {"cmd": "matmul_peak", "threads": N}                           -> gflops
    {"cmd": "quit"}

Replies are {"ok": true, ...} or {"ok": false, "error": "..."}. Anything a toolchain prints goes to stderr, so
stdout carries only replies.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback

import numpy as np

MATMUL_SIZE = 1024


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return None


def _input_chw(manifest: dict) -> np.ndarray:
    """A deterministic image of the bundle's input size, laid out as every converter's `predict` takes it."""
    shape = manifest["input"]["shape"]
    channels, height, width = (shape[3], shape[1], shape[2]) if manifest["input"].get("layout") == "NHWC" \
        else shape[1:]
    return np.random.default_rng(0).standard_normal((channels, height, width)).astype(np.float32)


def _load_bundle(path: str, threads: int | None):
    from edgevit.converters import get_target
    from edgevit.converters.bundle import read_bundle

    from .measurement import RUNTIMES

    bundle = read_bundle(path)
    target = get_target(bundle.target)
    return (target.load(bundle.artifact, threads), _input_chw(bundle.manifest), RUNTIMES[target.NAME],
            target.toolchain_versions())


def _load_eager(spec: dict, threads: int | None):
    import torch

    import edgevit

    if threads:
        torch.set_num_threads(threads)
    model = edgevit.create_model(spec["variant"], img_size=spec.get("img_size"), num_classes=spec.get("num_classes"),
                                 in_chans=spec.get("in_chans"))
    channels, height, width = model.pretrained_cfg["input_size"]
    image = np.random.default_rng(0).standard_normal((channels, height, width)).astype(np.float32)

    def predict(chw: np.ndarray):
        with torch.inference_mode():
            return model(torch.from_numpy(chw[None]))[0]
    return predict, image, "pytorch-eager", {"torch": torch.__version__}


def _matmul_peak(threads: int | None) -> float:
    """Best-of fp32 GEMM throughput in GFLOP/s: the ceiling a model's latency is judged against."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    best = float("inf")
    for _ in range(20):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * MATMUL_SIZE**3 / best / 1e9


class Worker:
    def __init__(self) -> None:
        self.predict = None
        self.image = None

    def load(self, request: dict) -> dict:
        rss_before = current_rss_mb()
        start = time.perf_counter()
        if request.get("bundle"):
            self.predict, self.image, runtime, versions = _load_bundle(request["bundle"], request.get("threads"))
        else:
            self.predict, self.image, runtime, versions = _load_eager(request["eager"], request.get("threads"))
        load_ms = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        self.predict(self.image)
        first_ms = (time.perf_counter() - start) * 1e3
        return {"load_ms": load_ms, "first_inference_ms": first_ms, "runtime": runtime, "versions": versions,
                "rss_before_load_mb": rss_before, "peak_rss_mb": peak_rss_mb()}

    def run(self, request: dict) -> dict:
        if self.predict is None:
            raise RuntimeError("run before load")
        samples = []
        for _ in range(int(request["iters"])):
            start = time.perf_counter_ns()
            self.predict(self.image)
            samples.append((time.perf_counter_ns() - start) / 1e6)
        return {"samples_ms": samples, "peak_rss_mb": peak_rss_mb()}


def serve(requests, reply) -> None:
    worker = Worker()
    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        if request["cmd"] == "quit":
            break
        try:
            if request["cmd"] == "load":
                answer = worker.load(request)
            elif request["cmd"] == "run":
                answer = worker.run(request)
            elif request["cmd"] == "matmul_peak":
                answer = {"gflops": _matmul_peak(request.get("threads"))}
            else:
                raise ValueError(f"unknown command {request['cmd']!r}")
            reply({"ok": True, **answer})
        except Exception as exc:  # the harness reports it; the worker stays up for the next command
            traceback.print_exc(file=sys.stderr)
            reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def main() -> None:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # toolchains print to stdout; keep the protocol clean

    def reply(message: dict) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()
    serve(sys.stdin, reply)


if __name__ == "__main__":
    main()
