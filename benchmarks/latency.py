"""Host latency of the same model on ExecuTorch (XNNPACK), LiteRT (XNNPACK) and ONNX Runtime, with eager
PyTorch as the baseline: batch 1, fp32, through `edgevit bench`'s host harness (each runtime in its own
process, the processes taking turns, so ratios survive a noisy machine).

    python benchmarks/latency.py --out benchmarks/results [--models tnt_ti t2t_vit_7] [--threads 1 2] [--int8]

Converts each model once into --bundles (default: a temporary directory), then writes latency.json (every
bench report, raw samples included) and latency.md. With --int8 the static int8 bundles of ExecuTorch and
LiteRT (calibrated on Fashion-MNIST training images) take turns with the fp32 ones, and a second table gives
int8's speed-up and size ratio per runtime. These are numbers for this 2-core x86 host, not phone numbers;
`edgevit bench --device android|jetson` is the tool for devices.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from edgevit.bench import bench
from edgevit.bench.environment import cpu_label
from edgevit.convert import convert
from edgevit.converters import backend_summary

DEFAULT_MODELS = ["tnt_ti", "t2t_vit_7", "nest_tiny_jx", "crossvit_9_240"]
RUNTIMES = ["executorch", "tflite", "onnx"]
INT8_RUNTIMES = ["executorch", "tflite"]  # the XNNPACK runtimes; ONNX int8 is for TensorRT, not ONNX Runtime's CPU
CALIBRATION_IMAGES = 32  # enough for int8 ranges that run at full speed; accuracy is parity_suite.py's business
COLUMNS = {"executorch": "ExecuTorch (XNNPACK)", "tflite": "LiteRT (XNNPACK)", "onnx": "ONNX Runtime",
           "pytorch": "eager PyTorch"}


def bundles_for(model: str, root: Path, int8: bool = False) -> list[Path]:
    wanted = [(runtime, "fp32") for runtime in RUNTIMES] + [(runtime, "int8") for runtime in INT8_RUNTIMES if int8]
    paths = {(runtime, precision): root / model / f"{runtime}-{precision}" for runtime, precision in wanted}
    for precision in ("fp32", "int8"):
        missing = [runtime for (runtime, p), path in paths.items()
                   if p == precision and not (path / "manifest.json").is_file()]
        if not missing:
            continue
        # int8 is verified against its own float model like any conversion (random weights: a loose check of the
        # graph's fidelity); parity_suite.py scores int8 accuracy of trained models
        quantize = {"quantize": "int8", "calib": "fashion-mnist", "calib_samples": CALIBRATION_IMAGES} \
            if precision == "int8" else {}
        failed = [o for o in convert(model, targets=missing, out=root, parallel=True, **quantize) if o.status != "ok"]
        if failed:
            raise SystemExit(f"{model}: conversion failed: {[(o.target, o.error) for o in failed]}")
    return list(paths.values())


def _by_runtime(report: dict, precision: str) -> dict[str, dict]:
    return {m["target"]: m for m in report["measurements"] if m["precision"] == precision or m["target"] == "pytorch"}


def _median(measurement: dict | None) -> float | None:
    return measurement["latency_ms"]["median"] if measurement and measurement["latency_ms"] else None


def row(report: dict) -> str:
    """One model at one thread count: each runtime's median (p90, CV when unstable) and the .pte/.tflite ratio."""
    by = _by_runtime(report, "fp32")

    def cell(target: str) -> str:
        m = by.get(target)
        if not m or not m["latency_ms"]:
            return "failed" if m else "—"
        latency = m["latency_ms"]
        flag = f", CV {latency['cv']:.0%}" if latency["cv"] > 0.10 else ""
        return f"{latency['median']:.1f} ms ({latency['p90']:.1f}{flag})"
    pte, tflite = _median(by.get("executorch")), _median(by.get("tflite"))
    ratio = f"{pte / tflite:.2f}" if pte and tflite else "—"
    model = report["measurements"][0]["variant"]
    return f"| {model} | {report['settings']['threads']} | " + " | ".join(cell(t) for t in COLUMNS) + f" | {ratio} |"


def int8_rows_of(report: dict) -> list[str]:
    """Per XNNPACK runtime: int8 against fp32 of the same model in the same run (time, size, backend facts)."""
    fp32, int8 = _by_runtime(report, "fp32"), _by_runtime(report, "int8")
    rows = []
    for runtime in INT8_RUNTIMES:
        base, quantized = fp32.get(runtime), int8.get(runtime)
        if not quantized:
            continue
        fast, slow = _median(quantized), _median(base)
        speedup = f"{slow / fast:.2f}x" if fast and slow else "—"
        sizes = (base or {}).get("size_mb"), quantized.get("size_mb")
        size_ratio = f"{sizes[0] / sizes[1]:.2f}x smaller" if all(sizes) else "—"
        rows.append(f"| {quantized['variant']} | {report['settings']['threads']} | {COLUMNS[runtime]} "
                    f"| {slow or 0:.1f} | {fast or 0:.1f} | {speedup} | {sizes[0] or 0:.2f} | {sizes[1] or 0:.2f} "
                    f"| {size_ratio} | {backend_of(quantized['bundle'])} |")
    return rows


def backend_of(bundle: str | None) -> str:
    return backend_summary(json.loads((Path(bundle) / "manifest.json").read_text())["report"]) if bundle else ""


def markdown(reports: list[dict], meta: dict) -> str:
    lines = [f"# Host latency ({meta['date']}, {meta['cpu']}, {meta['cores']} cores, batch 1, fp32)", "",
             f"Command: `{meta['command']}`. `edgevit bench` host harness: every runtime in its own process, "
             f"the processes taking turns of 5 inferences; median of {meta['iters']} runs after {meta['warmup']} "
             "warm-up runs, p90 in brackets, CV after the p90 when above 10 % (unstable).", "",
             "| model | threads | " + " | ".join(COLUMNS.values()) + " | .pte / .tflite |",
             "|---|---|" + "---|" * (len(COLUMNS) + 1)]
    lines += [row(report) for report in reports]
    int8_rows = [line for report in reports for line in int8_rows_of(report)]
    if int8_rows:
        lines += ["", "## int8 against fp32 (same runs)", "",
                  f"Static int8 (`edgevit convert MODEL --target executorch tflite --quantize int8 --calib fashion-mnist "
                  f"--calib-samples {CALIBRATION_IMAGES}`: per-channel int8 weights, per-tensor int8 activations, "
                  "LayerNorm, softmax, GELU and attention matmuls float by design) timed in the same interleaved "
                  "runs as the fp32 bundles above.", "",
                  "| model | threads | runtime | fp32 ms | int8 ms | int8 speed-up | fp32 MB | int8 MB | size ratio "
                  "| int8 backend |", "|---|---|---|---|---|---|---|---|---|---|"]
        lines += int8_rows
    lines += ["", "Compare within a row: the runtimes took turns, so a busy machine slows them alike and the ratio "
              "holds; absolute times across rows with a CV flag were taken while other work shared the cores."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--int8", action="store_true",
                        help="also time static int8 ExecuTorch and LiteRT bundles against their fp32 ones")
    parser.add_argument("--bundles", type=Path, help="keep converted bundles here (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgevit-latency-") as scratch:
        root = args.bundles or Path(scratch)
        reports = []
        for model in args.models:
            paths = bundles_for(model, root, args.int8)
            for threads in args.threads:
                report = bench(paths, warmup=args.warmup, iters=args.iters, threads=threads)
                reports.append(report)
                print(row(report), flush=True)
    environment = reports[0]["environment"]
    meta = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_label(), "cores": environment["cores"],
            "machine": platform.machine(), "iters": args.iters, "warmup": args.warmup,
            "command": "python " + " ".join(sys.argv)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(json.dumps({"meta": meta, "reports": reports}, indent=1) + "\n")
    (out / "latency.md").write_text(markdown(reports, meta))
    print(f"wrote {out / 'latency.md'}")


if __name__ == "__main__":
    main()
