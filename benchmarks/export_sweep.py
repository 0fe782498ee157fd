"""Export-clean sweep of every registered variant: params and MACs against the published figures, strict
export with both LayerNorm forms, forbidden-op census, max rank, exported-vs-eager error.

    python benchmarks/export_sweep.py --out benchmarks/results [--pattern 'tnt*'] [--jobs 2]

Writes export_sweep.json and export_sweep.md to --out. Each variant runs in its own process, so a crash or
out-of-memory in one does not lose the others.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

import edgevit
from edgevit.analysis import check_export_clean, count_macs, count_params

FORMS = ("native", "matmul")


def measure(name: str) -> dict:
    variant = edgevit.get_variant(name)
    model = edgevit.create_model(name)
    params = count_params(model)["total"]
    macs = count_macs(model)
    row = {"variant": name, "family": variant.family, "input": variant.cfg.input_size[-1],
           "params_m": params / 1e6, "published_params_m": variant.reported.params_m,
           "gmacs": macs / 1e9, "published_gmacs": variant.reported.gmacs, "export": {}}
    for form in FORMS:
        start = time.perf_counter()
        report = check_export_clean(model, layer_norm=form)
        row["export"][form] = {"seconds": round(time.perf_counter() - start, 1), "max_rank": report.max_rank,
                               "max_abs_diff": report.max_abs_diff, "violations": report.violations,
                               "num_ops": sum(report.ops.values())}
    return row


def run_isolated(name: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True)
    if done.returncode != 0:
        return {"variant": name, "error": (done.stderr.strip().splitlines() or ["crashed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# Export sweep ({meta['date']}, torch {meta['torch']}, {meta['machine']})", "",
             f"Command: `{meta['command']}`", "",
             "| variant | input | params M (published) | GMACs (published) | export native | export matmul-LN "
             "| max rank | max abs diff (native / matmul) | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['variant']} | | | | ERROR: {row['error']} | | | | |")
            continue
        native, matmul = row["export"]["native"], row["export"]["matmul"]
        status = lambda r: "clean" if not r["violations"] else "; ".join(r["violations"])  # noqa: E731
        lines.append(
            f"| {row['variant']} | {row['input']} | {row['params_m']:.3f} ({row['published_params_m']}) "
            f"| {row['gmacs']:.3f} ({row['published_gmacs']}) | {status(native)} | {status(matmul)} "
            f"| {max(native['max_rank'], matmul['max_rank'])} "
            f"| {native['max_abs_diff']:.1e} / {matmul['max_abs_diff']:.1e} "
            f"| {native['seconds'] + matmul['seconds']:.0f} |")
    clean = sum(1 for r in rows if "error" not in r and not any(r["export"][f]["violations"] for f in FORMS))
    lines += ["", f"{clean} of {len(rows)} variants export clean with both LayerNorm forms."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--pattern", default="*")
    parser.add_argument("--jobs", type=int, default=1, help="variants measured at once")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return 0
    names = edgevit.list_models(args.pattern)
    rows = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for row in pool.map(run_isolated, names):
            rows.append(row)
            print(f"[{len(rows)}/{len(names)}] {row['variant']}: "
                  f"{row.get('error') or {f: row['export'][f]['violations'] or 'clean' for f in FORMS}}", flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "command": "python benchmarks/export_sweep.py " + " ".join(sys.argv[1:])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "export_sweep.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / "export_sweep.md").write_text(markdown(rows, meta))
    print(f"wrote {out / 'export_sweep.md'}")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
