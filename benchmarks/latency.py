"""Host latency of the same model on ExecuTorch (XNNPACK), LiteRT (XNNPACK) and ONNX Runtime, with eager
PyTorch as the baseline: batch 1, fp32, through `edgevit bench`'s host harness (each runtime in its own
process, the processes taking turns, so ratios survive a noisy machine).

    python benchmarks/latency.py --out benchmarks/results [--models tnt_ti t2t_vit_7] [--threads 1 2]

Converts each model once into --bundles (default: a temporary directory), then writes latency.json (every
bench report, raw samples included) and latency.md. These are numbers for this 2-core x86 host, not phone
numbers; `edgevit bench --device android|jetson` is the tool for devices.
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
from edgevit.convert import convert

DEFAULT_MODELS = ["tnt_ti", "t2t_vit_7", "nest_tiny_jx", "crossvit_9_240"]
RUNTIMES = ["executorch", "tflite", "onnx"]
COLUMNS = {"executorch": "ExecuTorch (XNNPACK)", "tflite": "LiteRT (XNNPACK)", "onnx": "ONNX Runtime",
           "pytorch": "eager PyTorch"}


def bundles_for(model: str, root: Path) -> list[Path]:
    paths = [root / model / f"{runtime}-fp32" for runtime in RUNTIMES]
    missing = [runtime for runtime, path in zip(RUNTIMES, paths) if not (path / "manifest.json").is_file()]
    if missing:
        failed = [o for o in convert(model, targets=missing, out=root, parallel=True) if o.status != "ok"]
        if failed:
            raise SystemExit(f"{model}: conversion failed: {[(o.target, o.error) for o in failed]}")
    return paths


def row(report: dict) -> str:
    """One model at one thread count: each runtime's median (p90, CV when unstable) and the .pte/.tflite ratio."""
    by = {m["target"]: m for m in report["measurements"]}

    def cell(target: str) -> str:
        m = by.get(target)
        if not m or not m["latency_ms"]:
            return "failed" if m else "—"
        latency = m["latency_ms"]
        flag = f", CV {latency['cv']:.0%}" if latency["cv"] > 0.10 else ""
        return f"{latency['median']:.1f} ms ({latency['p90']:.1f}{flag})"
    ratio = (f"{by['executorch']['latency_ms']['median'] / by['tflite']['latency_ms']['median']:.2f}"
             if all(by.get(t) and by[t]["latency_ms"] for t in ("executorch", "tflite")) else "—")
    model = report["measurements"][0]["variant"]
    return f"| {model} | {report['settings']['threads']} | " + " | ".join(cell(t) for t in COLUMNS) + f" | {ratio} |"


def markdown(reports: list[dict], meta: dict) -> str:
    lines = [f"# Host latency ({meta['date']}, {meta['cpu']}, {meta['cores']} cores, batch 1, fp32)", "",
             f"Command: `{meta['command']}`. `edgevit bench` host harness: every runtime in its own process, "
             f"the processes taking turns of 5 inferences; median of {meta['iters']} runs after {meta['warmup']} "
             "warm-up runs, p90 in brackets, CV after the p90 when above 10 % (unstable).", "",
             "| model | threads | " + " | ".join(COLUMNS.values()) + " | .pte / .tflite |",
             "|---|---|" + "---|" * (len(COLUMNS) + 1)]
    lines += [row(report) for report in reports]
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
    parser.add_argument("--bundles", type=Path, help="keep converted bundles here (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgevit-latency-") as scratch:
        root = args.bundles or Path(scratch)
        reports = []
        for model in args.models:
            paths = bundles_for(model, root)
            for threads in args.threads:
                report = bench(paths, warmup=args.warmup, iters=args.iters, threads=threads)
                reports.append(report)
                print(row(report), flush=True)
    environment = reports[0]["environment"]
    meta = {"date": time.strftime("%Y-%m-%d"), "cpu": environment["cpu"], "cores": environment["cores"],
            "machine": platform.machine(), "iters": args.iters, "warmup": args.warmup,
            "command": "python " + " ".join(sys.argv)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(json.dumps({"meta": meta, "reports": reports}, indent=1) + "\n")
    (out / "latency.md").write_text(markdown(reports, meta))
    print(f"wrote {out / 'latency.md'}")


if __name__ == "__main__":
    main()
