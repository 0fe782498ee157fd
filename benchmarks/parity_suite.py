"""The parity table of issue 4: one model per family trained on Fashion-MNIST at 32x32, then every target and recipe
scored against it on the whole test split, each artifact in its own runtime.

    python benchmarks/parity_suite.py --out benchmarks/results            # train what is missing, then score
    python benchmarks/parity_suite.py --models t2t_vit_7 --skip-train      # score existing runs/suite/* only
    python benchmarks/parity_suite.py --skip-train --qat executorch tflite  # add QAT rows (fine-tunes if needed)

Float runs go to runs/suite/MODEL (git-ignored; `edgevit train` with the settings below, skipped when best.pt is
there), bundles to runs/suite/MODEL/parity/bundles; OUT/parity/MODEL.{json,md} and OUT/parity.md are the results.
Equivalent per model: `edgevit train MODEL --img-size 32 --epochs E --batch-size B --precision P --out
runs/suite/MODEL` then `edgevit parity MODEL --weights runs/suite/MODEL/best.pt --targets all --precisions fp32
fp16 --quantize RECIPES...`. QAT rows: `edgevit qat MODEL --weights runs/suite/MODEL/best.pt --target T
--epochs E --train-samples N` (to runs/suite/MODEL/qat-T/qat.pt), then `edgevit parity MODEL --weights
runs/suite/MODEL/qat-T/qat.pt --targets T`, merged into the model's table against the same float best.pt.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

from edgevit.bench.environment import cpu_model
from edgevit.converters import resolve_targets
from edgevit.parity import ParityReport, markdown, parity
from edgevit.quantization.qat import qat
from edgevit.quantization.recipes import RECIPES
from edgevit.train import bf16_matmuls_are_fast, resolve_device, train

MODELS = ("tnt_ti", "t2t_vit_7", "nest_tiny", "crossvit_tiny_240")
RUNS = Path("runs/suite")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--train-samples", type=int, default=None,
                        help="class-balanced training images [all 60,000]")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs [10]")
    parser.add_argument("--train-precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="float training's forward passes [auto: bf16 autocast where matmuls are fast in bf16 "
                             "(AMX, AVX512-BF16, GPUs), else fp32]; the scored weights are fp32 either way")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--skip-train", action="store_true", help="score only models already trained")
    parser.add_argument("--eval-samples", type=int, default=None, help="test images [the whole test split]")
    parser.add_argument("--calib-samples", type=int, default=256)
    parser.add_argument("--max-drop", type=float, default=None, help="passed to parity (keeps layers float)")
    parser.add_argument("--threads", type=int, default=1, help="runtime threads while scoring [1]")
    parser.add_argument("--targets", nargs="+", default=["all"], help="targets to score [all]")
    parser.add_argument("--runs", default=str(RUNS), help=f"where the float runs and bundles go [{RUNS}]")
    parser.add_argument("--precisions", nargs="*", default=["fp32", "fp16"], help="[fp32 fp16]; none: recipes only")
    parser.add_argument("--recipes", nargs="*", default=None,
                        help="TARGET:RECIPE to score [every recipe of --targets]; none: precisions only")
    parser.add_argument("--update", action="store_true",
                        help="replace only the scored rows in OUT/parity/MODEL.json (after a fix), keep the others")
    parser.add_argument("--qat", nargs="+", default=[], metavar="TARGET",
                        help="instead of the PTQ table: quantization-aware fine-tune each model for these targets "
                             "(when runs/suite/MODEL/qat-TARGET/qat.pt is missing) and add their qat-int8 rows")
    parser.add_argument("--qat-epochs", type=int, default=1, help="QAT epochs [1]")
    parser.add_argument("--qat-samples", type=int, default=5000, help="class-balanced QAT training images [5000]")
    parser.add_argument("--qat-lr", type=float, default=None, help="QAT peak learning rate [edgevit qat's, 1e-5]")
    args = parser.parse_args(argv)

    out = Path(args.out)
    (out / "parity").mkdir(parents=True, exist_ok=True)
    targets = resolve_targets(args.targets)
    recipes = (args.recipes if args.recipes is not None
               else sorted(f"{target}:{name}" for target, name in RECIPES if target in targets))
    command = "python benchmarks/parity_suite.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for name in args.models:
        run = Path(args.runs) / name
        weights = run / "best.pt"
        if not weights.is_file():
            if args.skip_train:
                print(f"{name}: no {weights}, skipped (--skip-train)")
                continue
            train(name, data="fashion-mnist", img_size=32, train_samples=args.train_samples, epochs=args.epochs,
                  batch_size=args.batch_size, eval_samples=2000, precision=_train_precision(args.train_precision),
                  out=run, log=print)
        if args.qat:
            _add_qat_rows(name, run, weights, out, command, args)
            continue
        started = time.perf_counter()
        report = parity(name, weights, targets=targets, precisions=args.precisions, recipes=recipes,
                        calib_samples=args.calib_samples, eval_samples=args.eval_samples, max_drop=args.max_drop,
                        threads=args.threads, out=run / "parity", log=print)
        minutes = (time.perf_counter() - started) / 60
        metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
        if args.update:
            report, section = _updated(out / "parity" / name, report,
                                       f"Re-scored {datetime.date.today()} after fixes, with `{command}`")
        else:
            section = _section(name, report, metrics, minutes, command, args)
        (out / "parity" / f"{name}.json").write_text(json.dumps(report.to_dict(), indent=1))
        (out / "parity" / f"{name}.md").write_text(section)
        print(markdown(report))
    print(f"wrote {write_combined(out)}")
    return 0


def _train_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    return "bf16" if bf16_matmuls_are_fast(resolve_device("auto")) else "fp32"


def _add_qat_rows(name: str, run: Path, weights: Path, out: Path, command: str, args) -> None:
    """Fine-tune for each --qat target where no qat.pt exists, score it against best.pt, merge into the table
    (on as many test images as the table's other rows)."""
    table = out / "parity" / f"{name}.json"
    if not table.is_file():
        raise SystemExit(f"{name}: no {table} to add QAT rows to; score the model first (without --qat)")
    eval_images = json.loads(table.read_text())["eval_images"]
    if args.eval_samples is not None and args.eval_samples != eval_images:
        raise SystemExit(f"{name}: its table was scored on {eval_images} test images; drop --eval-samples or "
                         f"pass {eval_images}")
    for target in resolve_targets(args.qat):
        checkpoint = run / f"qat-{target}" / "qat.pt"
        if not checkpoint.is_file():
            qat(name, weights, target, epochs=args.qat_epochs, lr=args.qat_lr, train_samples=args.qat_samples,
                eval_samples=2000, out=checkpoint.parent, log=print)
        trained = json.loads((checkpoint.parent / "metrics.json").read_text())
        report = parity(name, checkpoint, targets=[target], calib_samples=args.calib_samples,
                        eval_samples=eval_images, threads=args.threads, reference_weights=weights,
                        out=run / "parity" / f"qat-{target}", log=print)
        distilled = trained.get("loss", "labels") != "labels"
        loss = "distilling best.pt's predictions" if distilled else "on the labels"
        details = (f"`edgevit qat` fine-tuned best.pt for {trained['epochs']} epoch(s) on {trained['train_samples']} "
                   f"class-balanced training images, {loss} (lr {trained['lr']:g}, "
                   f"{trained['seconds'] / 60:.0f} min on {trained['device']}); drop, agreement and cosine are against "
                   "the same float best.pt as the other rows.")
        merged, section = _updated(out / "parity" / name, report,
                                   f"QAT added {datetime.date.today()} with `{command}`", details)
        (out / "parity" / f"{name}.json").write_text(json.dumps(merged.to_dict(), indent=1))
        (out / "parity" / f"{name}.md").write_text(section)
        print(markdown(report))


def write_combined(out: Path) -> Path:
    """OUT/parity.md: the header, the summary and every model's section scored so far."""
    done = [name for name in MODELS if (out / "parity" / f"{name}.md").is_file()]
    path = out / "parity.md"
    path.write_text("\n".join([HEADER, summary(out, done)]
                               + [(out / "parity" / f"{name}.md").read_text() for name in done]))
    return path


HEADER = """# Parity on Fashion-MNIST (issue 4)

One model per family trained from scratch at 32x32 on Fashion-MNIST, converted to every target and recipe, and
scored on the test split in each artifact's own runtime (`benchmarks/parity_suite.py`; each section gives its
command and training). Core ML packages are built and inspected but not run: Core ML runs only on macOS.
Latency is the median per image in the artifact's runtime on this host (batch 1), for comparing recipes only.
Sections whose float model saw 15000 training images for 4 epochs were trained under the suite's earlier defaults
(`--train-samples 15000 --epochs 4 --train-precision fp32`); each training line says how its model was trained.
"""


def summary(out: Path, models: list[str]) -> str:
    """Float top-1 per model, then the top-1 drop (points) of every scored artifact; '-' where not scored."""
    reports = {name: json.loads((out / "parity" / f"{name}.json").read_text()) for name in models}
    cells = {name: {(row["target"], row["precision"]): row for row in report["rows"]}
             for name, report in reports.items()}
    keys = list(dict.fromkeys(key for rows in cells.values() for key, row in rows.items()
                              if row.get("top1_drop") is not None or row["status"] == "failed"))

    def drop(row) -> str:
        if row is not None and row["status"] == "failed":
            return "failed"
        if row is None or row.get("top1_drop") is None:
            return "-"
        return f"{row['top1_drop']:.2f}" + (" *" if row["status"] == "over budget" else "")
    lines = ["Top-1 drop versus each float model, in points (negative: the artifact scored higher; * over budget; "
             "failed: the conversion's own check or the runtime failed, reason under the model's table). Full "
             "tables, with agreement, cosine, SNR, sizes and latencies, follow.", "",
             "| artifact | " + " | ".join(models) + " |", "|---|" + "---|" * len(models),
             "| float top-1 % (PyTorch) | " + " | ".join(f"{r['reference']['top1']:.2f}" for r in reports.values())
             + " |"]
    lines += [f"| {target} {precision} | " + " | ".join(drop(cells[name].get((target, precision))) for name in models)
              + " |" for target, precision in keys]
    return "\n".join(lines) + "\n"


def _section(name, report, metrics, minutes, command, args) -> str:
    body = markdown(report).split("\n")
    table_start = next((i for i, line in enumerate(body) if line.startswith("|")), len(body))
    return "\n".join([
        f"## {name}", "",
        f"`{command}` on {cpu_model()}, runtime threads {args.threads}, "
        f"{datetime.date.today()}.", "",
        f"Float model: {_training_line(metrics)}; top-1 {report.reference['top1']:.2f} % on {report.eval_images} "
        f"test images. Scoring took {minutes:.0f} min.",
        ""] + body[table_start:]).rstrip() + "\n"


def _updated(stem: Path, report: ParityReport, note: str, details: str = "") -> tuple[ParityReport, str]:
    """The model's previous results with the rows just scored in place of the old ones, and its section; `note`,
    the rows scored and `details` go above the table."""
    previous = json.loads(stem.with_suffix(".json").read_text())
    if previous["eval_images"] != report.eval_images or Path(previous["weights"]) != Path(report.reference["weights"]):
        raise SystemExit(f"{stem}: adding rows needs the same float weights and --eval-samples as the scored "
                         f"results ({previous['weights']}, {previous['eval_images']} images)")
    # a precision the target does not offer (ExecuTorch fp16) comes back "skipped": nothing was re-scored
    scored = [row for row in report.rows if row["target"] != "pytorch" and row.get("status") != "skipped"]
    fresh = {(row["target"], row["precision"]): row for row in scored}
    rows = [fresh.pop((row["target"], row["precision"]), row) for row in previous["rows"]] + list(fresh.values())
    rescored = [(row["target"], row["precision"]) for row in scored]
    failures = [line for line in previous["failures"]
                if not any(line.startswith(f"{target} {precision}:") for target, precision in rescored)]
    merged = ParityReport(**{key: previous[key] for key in ("model", "weights", "data", "eval_images", "calibration",
                                                            "keep_float", "reference")},
                          rows=rows, failures=failures + report.failures)
    old = stem.with_suffix(".md").read_text().split("\n")
    header = old[:next(i for i, line in enumerate(old) if line.startswith("|"))]
    note = " ".join(filter(None, [f"{note}: " + ", ".join(f"{t} {p}" for t, p in rescored) + ".", details]))
    body = markdown(merged).split("\n")
    table = body[next(i for i, line in enumerate(body) if line.startswith("|")):]
    return merged, "\n".join(header + [note, ""] + table).rstrip() + "\n"


def _training_line(metrics: dict) -> str:
    if not metrics:
        return "no metrics.json"
    planned, done = metrics["hyperparameters"]["epochs"], metrics["epochs"]
    epochs = f"{len(done)} epoch(s)" + (f" of {planned} planned (stopped early)" if len(done) < planned else "")
    bf16 = " with bf16 autocast forward passes" if metrics["hyperparameters"].get("precision") == "bf16" else ""
    last_gain = f" (last epoch {done[-1]['top1'] - done[-2]['top1']:+.1f} pt)" if len(done) > 1 else ""
    return (f"trained from scratch on {metrics['data']['train_samples']} class-balanced training images for {epochs}, "
            f"batch {metrics['hyperparameters']['batch_size']}{bf16}, `edgevit train` defaults otherwise, "
            f"{metrics['seconds'] / 60:.0f} min on {metrics['device']}; test top-1 per epoch (2,000 images) "
            + ", ".join(f"{epoch['top1']:.1f}" for epoch in done) + last_gain)


if __name__ == "__main__":
    sys.exit(main())
