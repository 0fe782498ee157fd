"""How much faster can int8 be on this CPU? One transformer MLP (Linear-GELU-Linear) in fp32, static int8 and
dynamic int8 through ExecuTorch/XNNPACK and LiteRT/XNNPACK, each in its own process via the bench harness.

    python benchmarks/int8_ceiling.py --out benchmarks/results [--shapes 197x384 3136x12]

A whole model cannot speed up more than its GEMMs do, so this bounds what the int8 recipes can reach here.
The narrow shape (TNT-Ti's word MLP, 12 -> 48 -> 12) also shows where ExecuTorch's fp32 GEMMs trail LiteRT's.
Writes int8_ceiling.json and int8_ceiling.md.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from edgevit.bench import bench
from edgevit.bench.environment import cpu_label, host_environment
from edgevit.converters import executorch, tflite
from edgevit.converters.bundle import artifact_digest, write_manifest
from edgevit.quantization.pt2e import calibrated
from edgevit.quantization.recipes import litert_quant_config, litert_quantizer, xnnpack_quantizer


class Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def bundle(directory: Path, target, model: nn.Module, example: torch.Tensor, precision: str, **options) -> Path:
    """A minimal bundle (artifact + manifest) the bench harness can time."""
    directory.mkdir(parents=True)
    report = target.convert(model, example, directory / target.ARTIFACT, **options)
    size, sha = artifact_digest(directory / target.ARTIFACT)
    write_manifest(directory, {"status": "ok", "model": {"variant": "mlp"}, "target": target.NAME,
                               "precision": precision, "num_classes": None,
                               "input": {"shape": list(example.shape), "layout": "NCHW"},
                               "artifact": {"file": target.ARTIFACT, "size_bytes": size, "sha256": sha},
                               "report": report})
    return directory


def measure_shape(tokens: int, dim: int, iters: int, threads: list[int]) -> list[dict]:
    """fp32, static and dynamic int8 medians of one MLP on (tokens, dim) in both runtimes, per thread count."""
    torch.manual_seed(0)
    model = Mlp(dim).eval()
    # (1, 1, tokens, dim): the harness feeds rank-4 inputs, and a Linear takes any leading dims
    example = torch.randn(1, 1, tokens, dim)
    calibration = [torch.randn_like(example) for _ in range(16)]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        paths = []
        for target, quantizer in ((executorch, xnnpack_quantizer), (tflite, litert_quantizer)):
            paths.append(bundle(root / f"{target.NAME}-fp32", target, model, example, "fp32"))
            for recipe, dynamic in (("int8", False), ("dynamic-int8", True)):
                quantized = calibrated(model, example, quantizer(dynamic), None if dynamic else calibration, recipe,
                                       fold_quantize=target is not tflite)
                options = {"quant_config": litert_quant_config(dynamic)} if target is tflite else {}
                paths.append(bundle(root / f"{target.NAME}-{recipe}", target, quantized, example, recipe, **options))
        for count in threads:
            report = bench(paths, iters=iters, warmup=20, threads=count, baseline=False)
            for runtime in ("executorch", "tflite"):
                medians = {m["precision"]: m["latency_ms"]["median"] for m in report["measurements"]
                           if m["target"] == runtime}
                rows.append({"tokens": tokens, "dim": dim, "gmacs": 2 * tokens * dim * 4 * dim / 1e9,
                             "runtime": runtime, "threads": count, "median_ms": medians,
                             "speedup": {k: medians["fp32"] / v for k, v in medians.items()}})
                print(rows[-1], flush=True)
    return rows


def parse_shape(text: str) -> tuple[int, int]:
    tokens, _, dim = text.partition("x")
    return int(tokens), int(dim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=[(197, 384), (3136, 12)],
                        metavar="TOKENSxDIM", help="MLP inputs to time; the defaults are a ViT-S block and "
                        "TNT-Ti's inner (word) MLP, whose narrow GEMMs behave differently")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    args = parser.parse_args()
    rows = [row for tokens, dim in args.shapes for row in measure_shape(tokens, dim, args.iters, args.threads)]
    shapes = " ".join(f"{tokens}x{dim}" for tokens, dim in args.shapes)
    meta = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_label(), "environment": host_environment(),
            "command": f"python benchmarks/int8_ceiling.py --shapes {shapes} --iters {args.iters}"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8_ceiling.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [f"# int8 ceiling on this CPU ({meta['date']}, {meta['cpu']})", "",
             f"Command: `{meta['command']}`. One MLP block (Linear dim->4 dim, GELU, Linear back) on "
             f"tokens x dim inputs, each runtime and precision in its own process, medians of {args.iters} "
             "interleaved runs. The last column compares the two runtimes' fp32 (ExecuTorch / LiteRT).", "",
             "| tokens x dim | GMACs | runtime | threads | fp32 ms | static int8 ms | dynamic int8 ms "
             "| static speed-up | dynamic speed-up | fp32 ET / LiteRT |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        m, s = row["median_ms"], row["speedup"]
        litert = next(r for r in rows if r["runtime"] == "tflite" and r["threads"] == row["threads"]
                      and (r["tokens"], r["dim"]) == (row["tokens"], row["dim"]))
        ratio = f"{m['fp32'] / litert['median_ms']['fp32']:.2f}" if row["runtime"] == "executorch" else ""
        lines.append(f"| {row['tokens']}x{row['dim']} | {row['gmacs']:.4f} | {row['runtime']} | {row['threads']} "
                     f"| {m['fp32']:.3f} | {m['int8']:.3f} | {m['dynamic-int8']:.3f} | {s['int8']:.2f}x "
                     f"| {s['dynamic-int8']:.2f}x | {ratio} |")
    (out / "int8_ceiling.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'int8_ceiling.md'}")


if __name__ == "__main__":
    main()
