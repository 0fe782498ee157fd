"""The measurement record every device path fills in (the report's rows), and how runner output fills it."""
from __future__ import annotations

from .stats import is_unstable, summarize

RUNTIMES = {"executorch": "executorch", "tflite": "litert", "onnx": "onnxruntime", "coreml": "coreml"}  # by target


def new_measurement(name: str, device: str, threads: int | None, bundle=None, variant: str | None = None,
                    target: str | None = None, precision: str | None = None, runtime: str | None = None) -> dict:
    manifest = bundle.manifest if bundle is not None else {}
    size = manifest.get("artifact", {}).get("size_bytes")
    return {"name": name, "bundle": str(bundle.path) if bundle is not None else None,
            "variant": variant or manifest.get("model", {}).get("variant"),
            "target": target or manifest.get("target"), "precision": precision or manifest.get("precision"),
            "runtime": runtime, "device": device, "status": "failed", "error": None, "threads": threads,
            "latency_ms": None, "samples_ms": [], "load_ms": None, "first_inference_ms": None,
            "memory_mb": None, "memory_kind": None, "size_mb": size / 1e6 if size else None,
            "energy_mj": None, "energy_note": None, "top1_drop": None, "fraction_of_peak": None, "gmacs": None,
            "extra": {}}


def apply_runner_output(measurement: dict, parsed: dict, exit_code: int | None, runner: str) -> dict:
    """Numbers from a device runner's parsed output; a crash keeps what it printed and says so."""
    samples = parsed["samples_ms"]
    latency = summarize(samples) if samples else (dict(parsed["latency_ms"]) or None)
    if latency and "cv" not in latency and latency.get("std") is not None and latency.get("mean"):
        latency["cv"] = latency["std"] / latency["mean"]
    measurement.update(samples_ms=samples, latency_ms=latency, load_ms=parsed.get("init_ms"),
                       first_inference_ms=parsed.get("first_inference_ms"))
    measurement["extra"].update(parsed["extra"], runner_exit=exit_code, iterations_done=parsed.get("iterations"),
                                throughput_qps=parsed.get("throughput_qps"))
    if exit_code != 0 or not parsed["complete"]:
        detail = " | ".join(parsed["errors"][-3:]) or "no error message"
        measurement["error"] = f"{runner} exited with code {exit_code} before finishing: {detail}"[:1000]
        measurement["status"] = "partial" if latency else "failed"
    else:
        measurement["status"] = "unstable" if is_unstable(latency) else "ok"
    return measurement


def parse_output(parser, text: str, runner: str, *args) -> dict:
    """The parser's result, or an empty one that carries why nothing could be read (a runner that died early)."""
    try:
        return parser(text, *args)
    except Exception as exc:  # noqa: BLE001 - unreadable output is reported, never replaced by numbers
        tail = " ".join(text.strip().splitlines()[-3:])[-500:] if text and text.strip() else "no output"
        return {"runner": runner, "complete": False, "samples_ms": [], "latency_ms": {}, "iterations": None,
                "init_ms": None, "first_inference_ms": None, "throughput_qps": None, "peak_memory_mb": None,
                "extra": {}, "errors": [f"{exc}; its output ended with: {tail}"]}
