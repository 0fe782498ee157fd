"""Per-operator profile of ExecuTorch bundles (ETDump), summed by XNNPACK operator kind, as Markdown.

    python benchmarks/op_profile.py BUNDLE [BUNDLE ...] [--runs 10] [--threads 1] [--out profile.md]

A bundle is what `edgevit convert MODEL --target executorch [--quantize int8 ...]` wrote (the directory holding
model.pte and manifest.json). Use it to see which float islands keep an int8 .pte from its speed-up.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from edgevit.bench.op_profile import markdown, profile_bundle
from edgevit.errors import EdgevitError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the tables here")
    args = parser.parse_args()
    tables = []
    for bundle in args.bundles:
        try:
            kinds, wall_ms = profile_bundle(bundle, runs=args.runs, threads=args.threads)
        except EdgevitError as exc:
            raise SystemExit(f"op_profile: {exc}") from None
        tables.append(markdown(kinds, wall_ms, f"{bundle} ({args.threads} thread(s), {args.runs} runs)"))
        print(tables[-1] + "\n")
    if args.out:
        args.out.write_text("\n\n".join(tables) + "\n")


if __name__ == "__main__":
    main()
