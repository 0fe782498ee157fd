"""Host latency of the same model on ExecuTorch (XNNPACK), LiteRT (XNNPACK) and ONNX Runtime, with eager
PyTorch as the baseline: batch 1, fp32, warm-up, then runtimes measured interleaved so their ratios survive
a noisy machine.

    python benchmarks/latency.py --out benchmarks/results [--models tnt_ti t2t_vit_7] [--threads 2]

Writes latency.json and latency.md. These are smoke numbers for a 2-core x86 host, not phone numbers;
`edgevit bench` (Android, Jetson) is the tool for devices.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import edgevit
from edgevit.convert import convert
from edgevit.converters import get_target

DEFAULT_MODELS = ["tnt_ti", "t2t_vit_7", "nest_tiny_jx", "crossvit_9_240"]
RUNTIMES = ["executorch", "tflite", "onnx"]


def measure(models: list[str], threads: int, warmup: int, iters: int) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    for name in models:
        model = edgevit.create_model(name)
        image = np.random.default_rng(0).standard_normal(model.pretrained_cfg["input_size"]).astype(np.float32)
        with tempfile.TemporaryDirectory(prefix="edgevit-latency-") as out:
            outcomes = convert(model, targets=RUNTIMES, out=out, verify=False)
            predictors = {o.target: get_target(o.target).load(o.bundle / get_target(o.target).ARTIFACT, threads)
                          for o in outcomes if o.status == "ok"}
            eager_input = torch.from_numpy(image)[None]

            def eager(_):
                with torch.no_grad():
                    return model(eager_input)

            predictors["pytorch"] = eager
            samples = {runtime: [] for runtime in predictors}
            for _ in range(warmup):
                for predict in predictors.values():
                    predict(image)
            for _ in range(iters):  # interleaved: each round times every runtime once
                for runtime, predict in predictors.items():
                    start = time.perf_counter()
                    predict(image)
                    samples[runtime].append((time.perf_counter() - start) * 1e3)
        for runtime, values in samples.items():
            values = sorted(values)
            rows.append({"model": name, "runtime": runtime, "median_ms": statistics.median(values),
                         "p90_ms": values[int(0.9 * (len(values) - 1))], "min_ms": values[0],
                         "mean_ms": statistics.fmean(values), "cv": statistics.pstdev(values) / statistics.fmean(values),
                         "samples": len(values)})
        print(f"{name}: " + ", ".join(f"{r['runtime']} {r['median_ms']:.1f} ms" for r in rows if r["model"] == name),
              flush=True)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# Host latency ({meta['date']}, {meta['machine']}, {meta['threads']} threads, batch 1, fp32)", "",
             f"Command: `{meta['command']}`. Median of {meta['iters']} interleaved runs after {meta['warmup']} "
             "warm-up runs; p90 in brackets.", "",
             "| model | ExecuTorch (XNNPACK) | LiteRT (XNNPACK) | ONNX Runtime | eager PyTorch | .pte / .tflite |",
             "|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        by = {r["runtime"]: r for r in rows if r["model"] == model}
        cell = lambda k: f"{by[k]['median_ms']:.1f} ms ({by[k]['p90_ms']:.1f})" if k in by else "failed"  # noqa: E731
        ratio = (f"{by['executorch']['median_ms'] / by['tflite']['median_ms']:.2f}"
                 if "executorch" in by and "tflite" in by else "-")
        lines.append(f"| {model} | {cell('executorch')} | {cell('tflite')} | {cell('onnx')} | {cell('pytorch')} "
                     f"| {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=40)
    args = parser.parse_args()
    rows = measure(args.models, args.threads, args.warmup, args.iters)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "threads": args.threads, "warmup": args.warmup, "iters": args.iters,
            "command": "python benchmarks/latency.py " + " ".join(sys.argv[1:])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / "latency.md").write_text(markdown(rows, meta))
    print(f"wrote {out / 'latency.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
