"""Conversion sweep: every variant (or those matching --pattern) to every target, with verification.

    python benchmarks/convert_sweep.py --out benchmarks/results [--pattern 'tnt*'] [--targets executorch onnx]

Records per variant and target: status, seconds, artifact size, backend facts (XNNPACK partitions and
undelegated ops, LiteRT full acceleration, ONNX ops TensorRT may refuse, Core ML max rank) and parity with
eager PyTorch (cosine, max abs error, top-1 agreement). Artifacts go to a temporary directory and are
deleted; only convert_sweep.json and convert_sweep.md are written to --out (merged with earlier rows, so
the sweep can be run in pieces).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import edgevit
from edgevit.convert import convert
from edgevit.converters import TARGETS, backend_summary


def sweep_variant(name: str, targets: list[str]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgevit-sweep-") as out:
        model = edgevit.create_model(name)
        for outcome in convert(model, targets=targets, out=out, parallel=True):
            metrics = outcome.verification.get("metrics", {})
            rows.append({"variant": name, "target": outcome.target, "precision": outcome.precision,
                         "status": outcome.status, "seconds": round(outcome.seconds, 1),
                         "size_mb": round(outcome.size_bytes / 1e6, 2) if outcome.size_bytes else None,
                         "backend": backend_summary(outcome.report),
                         "partitions": outcome.report.get("delegation", {}).get("partitions"),
                         "fully_accelerated": outcome.report.get("fully_accelerated"),
                         "verification": outcome.verification.get("status"),
                         "cosine_min": metrics.get("cosine_min"), "max_abs_error": metrics.get("max_abs_error"),
                         "top1_agreement": metrics.get("top1_agreement"), "error": outcome.error})
    return rows


def _with_backend_facts(row: dict) -> dict:
    """Rows from before partitions and full acceleration were stored: read them back from the backend phrase."""
    if "partitions" not in row:
        phrase = row["backend"] or ""
        row["partitions"] = int(phrase.split()[0]) if row["target"] == "executorch" and phrase[:1].isdigit() else None
        row["fully_accelerated"] = phrase.startswith("fully accelerated") if row["target"] == "tflite" else None
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    dates = sorted({row["date"] for row in rows})
    threads = sorted({row["threads"] for row in rows})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    lines = [f"# Conversion sweep ({when}, torch {meta['torch']}, {meta['machine']})", "",
             f"Seconds measured with {' or '.join(map(str, threads))} torch thread(s) on a 2-core host, each row "
             "on its date (see convert_sweep.json), often while other work shared the cores.", "",
             f"Command: `{meta['command']}` (run per variant with `--pattern NAME`; rows merge). Random weights; parity is against eager PyTorch on 8 Fashion-MNIST "
             "test images. Core ML numerics run only on macOS (\"not run\" here).", "",
             "| variant | target | precision | status | seconds | MB | backend | parity |",
             "|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r["variant"], r["target"])):
        if row["cosine_min"] is not None:
            parity = (f"cos {row['cosine_min']:.6f}, max err {row['max_abs_error']:.1e}, "
                      f"top-1 {row['top1_agreement']:.0%}")
        else:
            parity = row["verification"] or ""
        status = row["status"] if not row["error"] else f"{row['status']}: {row['error'][:120]}"
        lines.append(f"| {row['variant']} | {row['target']} | {row['precision']} | {status} | {row['seconds']} "
                     f"| {row['size_mb']} | {row['backend']} | {parity} |")
    ok = sum(r["status"] == "ok" for r in rows)
    one_partition = sum(r["partitions"] == 1 for r in rows if r["target"] == "executorch")
    accelerated = sum(bool(r["fully_accelerated"]) for r in rows if r["target"] == "tflite")
    cosines = [r["cosine_min"] for r in rows if r["cosine_min"] is not None]
    variants = len({r["variant"] for r in rows})
    lines += ["", f"**{ok} of {len(rows)} conversions ({variants} variants) succeeded** and passed verification "
              "(or were inspected, for Core ML on Linux). ExecuTorch: "
              f"{one_partition} of {sum(r['target'] == 'executorch' for r in rows)} in one XNNPACK partition; "
              f"TFLite: {accelerated} fully accelerated; worst parity cosine {min(cosines):.6f}." if cosines else ""]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--pattern", default="*")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    args = parser.parse_args()
    out = Path(args.out)
    results = out / "convert_sweep.json"
    previous = [_with_backend_facts(r) for r in json.loads(results.read_text())["rows"]] if results.exists() else []
    names = edgevit.list_models(args.pattern)
    fresh = []
    for index, name in enumerate(names, 1):
        start = time.perf_counter()
        fresh += sweep_variant(name, args.targets)
        statuses = ", ".join(f"{r['target']} {r['status']}" for r in fresh if r["variant"] == name)
        print(f"[{index}/{len(names)}] {name}: {statuses} ({time.perf_counter() - start:.0f} s)", flush=True)
    for row in fresh:  # rows merge across runs, so each keeps when and how it was measured
        row.update(date=time.strftime("%Y-%m-%d"), threads=torch.get_num_threads())
    replaced = {(r["variant"], r["target"]) for r in fresh}
    rows = [r for r in previous if (r["variant"], r["target"]) not in replaced] + fresh
    meta = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "machine": "x86_64",
            "command": "python benchmarks/convert_sweep.py --out benchmarks/results"}
    out.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / "convert_sweep.md").write_text(markdown(rows, meta))
    print(f"wrote {out / 'convert_sweep.md'}")
    return 0 if all(r["status"] == "ok" for r in fresh) else 1


if __name__ == "__main__":
    sys.exit(main())
