"""How much faster can int8 be on this CPU? One transformer MLP (Linear-GELU-Linear) in fp32, static int8 and
dynamic int8 through ExecuTorch/XNNPACK and LiteRT/XNNPACK, each in its own process via the bench harness.

    python benchmarks/int8_ceiling.py --out benchmarks/results [--tokens 197] [--dim 384]

A whole model cannot speed up more than its GEMMs do, so this bounds what the int8 recipes can reach here.
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
from edgevit.bench.environment import cpu_model, host_environment
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tokens", type=int, default=197)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    args = parser.parse_args()
    torch.manual_seed(0)
    model = Mlp(args.dim).eval()
    # (1, 1, tokens, dim): the harness feeds rank-4 inputs, and a Linear takes any leading dims
    example = torch.randn(1, 1, args.tokens, args.dim)
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
        for threads in args.threads:
            report = bench(paths, iters=args.iters, warmup=20, threads=threads, baseline=False)
            for runtime in ("executorch", "tflite"):
                medians = {m["precision"]: m["latency_ms"]["median"] for m in report["measurements"]
                           if m["target"] == runtime}
                rows.append({"runtime": runtime, "threads": threads, "median_ms": medians,
                             "speedup": {k: medians["fp32"] / v for k, v in medians.items()}})
                print(rows[-1], flush=True)
    macs = 2 * args.tokens * args.dim * 4 * args.dim
    meta = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "environment": host_environment(),
            "tokens": args.tokens, "dim": args.dim, "gmacs": macs / 1e9, "command": "python benchmarks/int8_ceiling.py"}
    out = Path(args.out)
    (out / "int8_ceiling.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [f"# int8 ceiling on this CPU ({meta['date']}, {meta['cpu']})", "",
             f"Command: `{meta['command']}`. One MLP block (Linear {args.dim}->{4 * args.dim}, GELU, Linear back) "
             f"on {args.tokens} tokens ({meta['gmacs']:.3f} GMACs), each runtime and precision in its own "
             f"process, medians of {args.iters} interleaved runs.", "",
             "| runtime | threads | fp32 ms | static int8 ms | dynamic int8 ms | static speed-up | dynamic speed-up |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        m, s = row["median_ms"], row["speedup"]
        lines.append(f"| {row['runtime']} | {row['threads']} | {m['fp32']:.3f} | {m['int8']:.3f} | "
                     f"{m['dynamic-int8']:.3f} | {s['int8']:.2f}x | {s['dynamic-int8']:.2f}x |")
    (out / "int8_ceiling.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'int8_ceiling.md'}")


if __name__ == "__main__":
    main()
