"""The `edgevit` command: argument parsing and printing only; the work happens in the Python API."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .console import console
from .errors import EdgevitError

EPILOG = """examples:
  edgevit list                      every variant, with params, MACs, input size and weights
  edgevit list 'crossvit*'          only the CrossViT variants
  edgevit info tnt_ti               config, preprocessing, params, MACs and the exported-graph op census
  edgevit convert tnt_ti --target coreml     a verified Core ML bundle (also: executorch, tflite, onnx, all)
  edgevit export tnt_ti --out out/  a strict torch.export program (.pt2) for your own toolchain
"""


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def cmd_list(args: argparse.Namespace) -> int:
    from .models.registry import get_variant, list_models

    names = list_models(args.pattern, family=args.family)
    if not names:
        raise EdgevitError(f"no variant matches '{args.pattern}'. Run `edgevit list` to see them all.")
    variants = [get_variant(n) for n in names]
    if args.json:
        print(json.dumps([{"name": v.name, "family": v.family, "aliases": list(v.aliases),
                           "params_m": v.reported.params_m, "gmacs": v.reported.gmacs, "top1": v.reported.top1,
                           "input_size": list(v.cfg.input_size), "weights": v.cfg.source,
                           "weights_url": v.cfg.url or v.cfg.hf_hub_id} for v in variants], indent=1))
        return 0
    rows = [[v.name, v.family, f"{v.reported.params_m:.2f}" if v.reported.params_m else "-",
             f"{v.reported.gmacs:.2f}" if v.reported.gmacs else "-", v.cfg.input_size[-1],
             f"{v.reported.top1:.1f}" if v.reported.top1 else "-",
             "yes" if v.cfg.has_weights else "no", ", ".join(v.aliases)] for v in variants]
    _print_table(rows, ["variant", "family", "params M", "GMACs", "input", "top-1", "weights", "aliases"])
    print(f"\n{len(variants)} variants. Params, MACs and top-1 are the published ImageNet figures; "
          "`edgevit info NAME` measures them and shows where the weights come from.")
    return 0


def _model_from_args(args: argparse.Namespace):
    from .models.factory import create_model

    return create_model(args.model, pretrained=getattr(args, "pretrained", False), weights=args.weights,
                        num_classes=args.num_classes, img_size=args.img_size)


def cmd_info(args: argparse.Namespace) -> int:
    from .analysis import describe

    model = _model_from_args(args)
    if not args.json:
        print(f"measuring {model.variant}" + (" and exporting it (strict torch.export)..." if not args.no_export
                                              else "..."), file=sys.stderr)
    info = describe(model, export=not args.no_export, layer_norm=args.layer_norm)
    if args.json:
        print(json.dumps(info, indent=1, default=str))
        return 0
    cfg, params, reported = info["pretrained_cfg"], info["params"], info["reported"]
    print(f"{info['variant']} ({info['family']}): {info['description']}")
    if info["aliases"]:
        print(f"  aliases        {', '.join(info['aliases'])}")
    print(f"  architecture   {', '.join(f'{k}={v}' for k, v in info['arch'].items())}")
    print(f"  input          {' x '.join(map(str, cfg['input_size']))} (C x H x W), batch 1 for export")
    print(f"  preprocessing  resize {cfg['interpolation']}, crop_pct {cfg['crop_pct']}, mean {tuple(cfg['mean'])}, "
          f"std {tuple(cfg['std'])}")
    print(f"  classes        {cfg['num_classes']}" + (f" ({cfg['labels']})" if cfg.get("labels") else ""))
    print(f"  weights        {info['weights']}; published: {cfg['source']}")
    if cfg.get("hf_hub_id") or cfg.get("url"):
        print(f"                 {cfg.get('url') or 'hf-hub:' + cfg['hf_hub_id']}")
    versus = f" (published {reported['params_m']} M)" if reported.get("params_m") else ""
    print(f"  params         {params['total'] / 1e6:.3f} M total, {params['trainable'] / 1e6:.3f} M trainable{versus}")
    versus = f" (published {reported['gmacs']})" if reported.get("gmacs") else ""
    print(f"  GMACs          {info['macs'] / 1e9:.3f}{versus}")
    if "export" in info:
        export = info["export"]
        status = "clean" if not export["violations"] else "NOT clean: " + "; ".join(export["violations"])
        print(f"  export         strict torch.export, LayerNorm {export['layer_norm']} form: {status}")
        print(f"                 max tensor rank {export['max_rank']}, exported vs eager max |diff| "
              f"{export['max_abs_diff']:.2e}")
        ops = sorted(export["ops"].items(), key=lambda item: -item[1])
        print("  op census      " + ", ".join(f"{op.split('.')[0]} x{n}" for op, n in ops))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from .analysis import check_export_clean, export_model

    model = _model_from_args(args)
    out = Path(args.out)
    target = out / f"{model.variant}.pt2"
    if target.exists() and not args.force:
        raise EdgevitError(f"{target} exists; pass --force to overwrite it.")
    out.mkdir(parents=True, exist_ok=True)
    print(f"exporting {model.variant} (weights: {model.weights_source}) ...", file=sys.stderr)
    report = check_export_clean(model, layer_norm=args.layer_norm)
    if report.violations:
        raise EdgevitError(f"{model.variant} is not export-clean: {'; '.join(report.violations)}")
    program = export_model(model, layer_norm=args.layer_norm)
    partial = target.with_suffix(".pt2.partial")
    torch.export.save(program, partial)
    partial.replace(target)
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB): {sum(report.ops.values())} core ATen ops, "
          f"max rank {report.max_rank}, exported vs eager max |diff| {report.max_abs_diff:.1e}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert
    from .converters import backend_summary

    options = {"coreml": {"image_input": args.image_input, "minimum_target": args.minimum_target,
                          "compute_units": args.compute_units},
               "tflite": {"nhwc": args.nhwc, "uint8_input": args.uint8_input},
               "onnx": {"opset": args.opset}}
    log = _terminal_log(args.verbose)
    if args.max_drop is not None:
        return _convert_within_budget(args, log)
    outcomes = convert(args.model, targets=args.target, out=args.out, weights=args.weights,
                       pretrained=args.pretrained, precision=args.precision, img_size=args.img_size,
                       num_classes=args.num_classes, force=args.force, verify=not args.no_verify,
                       keep_failed=args.keep_failed, target_options=options, parallel=True,
                       quantize=args.quantize, calib=args.calib, calib_samples=args.calib_samples,
                       data_dir=args.data_dir, float_modules=tuple(args.keep_float or ()),
                       quiet_toolchains=not args.verbose, log=log)
    rows = []
    for outcome in outcomes:
        accel = backend_summary(outcome.report)
        rows.append([outcome.target, outcome.precision, outcome.status.upper(),
                     f"{outcome.size_bytes / 1e6:.2f}" if outcome.size_bytes else "-", f"{outcome.seconds:.1f}",
                     outcome.summary, accel, str(outcome.bundle or "-")])
    print()
    _print_table(rows, ["target", "precision", "status", "MB", "seconds", "check", "backend", "bundle"])
    failed = [o for o in outcomes if o.status == "failed"]
    logs = {o.toolchain_log for o in outcomes if o.toolchain_log}
    _point_to_toolchain_logs(logs)
    if failed:
        print(f"\n{len(failed)} conversion(s) failed; see the messages above"
              + (" and the toolchain log." if logs else "."), file=sys.stderr)
    return 1 if failed else 0


def _terminal_log(verbose: bool):
    """edgevit's own lines, on the terminal even while the toolchains' output goes to a log (unless verbose)."""
    terminal = sys.stderr if verbose else console()
    return lambda message: print(message, file=terminal, flush=True)


def _convert_within_budget(args: argparse.Namespace, log) -> int:
    from .parity import quantize_within_budget

    if not args.quantize or not args.weights:
        raise EdgevitError("--max-drop measures the int8 drop against trained float weights on labelled data: give "
                           "--quantize RECIPE, --weights best.pt (edgevit train) and --calib DATA.")
    report = quantize_within_budget(args.model, args.weights, args.target, args.quantize, args.max_drop,
                                    args.calib or "fashion-mnist", out=args.out, force=args.force,
                                    keep_failed=args.keep_failed, data_dir=args.data_dir,
                                    calib_samples=args.calib_samples, eval_samples=args.eval_samples,
                                    keep_float=tuple(args.keep_float or ()), quiet_toolchains=not args.verbose,
                                    log=log)
    _point_to_toolchain_logs(_toolchain_logs(report))
    return _print_parity(report)


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    log = (lambda message: print(message, file=sys.stderr, flush=True))
    result = train(args.model, data=args.data, data_dir=args.data_dir, img_size=args.img_size, in_chans=args.in_chans,
                   epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                   label_smoothing=args.label_smoothing, device=args.device, precision=args.precision,
                   seed=args.seed, train_samples=args.train_samples, eval_samples=args.eval_samples,
                   augment=False if args.no_augment else None, out=args.out, resume=args.resume, force=args.force,
                   log=log)
    metrics = result.metrics
    rows = [[e["epoch"], f"{e['train_loss']:.4f}", f"{e['test_loss']:.4f}", f"{e['top1']:.2f}", f"{e['top5']:.2f}",
             f"{e['lr']:.2e}", f"{e['seconds']:.1f}"] for e in metrics["epochs"]]
    print()
    _print_table(rows, ["epoch", "train loss", "test loss", "top-1 %", "top-5 %", "lr", "seconds"])
    best, data = metrics["best"], metrics["data"]
    print(f"\n{metrics['model']} on {data['train']} ({data['train_samples']} images), tested on {data['test']} "
          f"({data['test_samples']}), {' x '.join(map(str, data['input_size']))} input, {metrics['device']}, "
          f"{metrics['seconds']:.0f} s")
    if best:
        print(f"best: epoch {best['epoch']}, top-1 {best['top1']:.2f}%, top-5 {best['top5']:.2f}% -> "
              f"{result.checkpoint}")
    print(f"metrics: {result.out / 'metrics.json'}; resume with --resume --out {result.out}")
    print(f"convert: edgevit convert {metrics['model']} --weights {result.checkpoint} --target tflite")
    return 0


def cmd_qat(args: argparse.Namespace) -> int:
    from .quantization.qat import qat, summary

    log = (lambda message: print(message, file=sys.stderr, flush=True))
    result = qat(args.model, args.weights, args.target, data=args.data, data_dir=args.data_dir, epochs=args.epochs,
                 lr=args.lr, batch_size=args.batch_size, train_samples=args.train_samples,
                 eval_samples=args.eval_samples, seed=args.seed, device=args.device, out=args.out, force=args.force,
                 float_modules=tuple(args.keep_float or ()), distill=not args.labels, log=log)
    rows = [[e["epoch"], f"{e['train_loss']:.4f}", f"{e['test_loss']:.4f}", f"{e['top1']:.2f}", f"{e['top5']:.2f}",
             f"{e['seconds']:.1f}"] for e in result.metrics["metrics"]["epochs"]]
    print()
    _print_table(rows, ["epoch", "train loss", "int8 test loss", "int8 top-1 %", "int8 top-5 %", "seconds"])
    print(f"\n{summary(result.metrics)} -> {result.checkpoint}")
    print(f"convert: edgevit convert {result.metrics['model']} --weights {result.checkpoint} --target {args.target}")
    return 0


def cmd_parity(args: argparse.Namespace) -> int:
    from .parity import parity

    log = _terminal_log(args.verbose)
    report = parity(args.model, args.weights, data=args.data, targets=args.targets, recipes=args.quantize or (),
                    precisions=args.precisions, data_dir=args.data_dir, calib_samples=args.calib_samples,
                    eval_samples=args.eval_samples, out=args.out, max_drop=args.max_drop,
                    keep_float=tuple(args.keep_float or ()), threads=args.threads,
                    reference_weights=args.reference, quiet_toolchains=not args.verbose, log=log)
    _point_to_toolchain_logs(_toolchain_logs(report))
    return _print_parity(report)


def _toolchain_logs(report) -> list[Path]:
    bundles = {Path(row["bundle"]).parent for row in report.rows if row.get("bundle")}
    return [path for path in (d / "toolchains.log" for d in bundles) if path.is_file()]


def _point_to_toolchain_logs(logs) -> None:
    logs = sorted(map(str, logs))
    if logs:
        print(f"\ntoolchain messages (warnings, C++ logs): {', '.join(logs)}; --verbose shows them live")


def _print_parity(report) -> int:
    from .parity import COLUMNS, table_rows

    print()
    _print_table(table_rows(report), COLUMNS)
    print(f"\n{report.eval_images} images of {report.data}; report: {report.out / 'parity.md'} (and parity.json)")
    for row in report.rows:
        if row.get("attempts") and row["status"] == "ok":
            print(f"{row['target']} {row['precision']}: kept float to fit the budget: {', '.join(row['float_layers'])}")
        if row.get("bundle"):
            print(f"{row['target']} {row['precision']}: {row['bundle']}")
    for line in report.failures:
        print(f"edgevit: budget broken: {line}", file=sys.stderr)
    for row in report.rows:
        if row.get("worst_layers"):
            print(f"  worst layers of {row['target']} {row['precision']} (SNR with only that layer in int8): "
                  + ", ".join(f"{name} {snr:.1f} dB" for name, snr in row["worst_layers"]), file=sys.stderr)
    return 0 if report.passed else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench, compare_markdown, load_report, markdown, write_report

    if args.compare:
        if len(args.compare) != 2 or args.items:
            raise EdgevitError("--compare takes exactly two reports (A.json B.json) and no bundles.")
        print(compare_markdown(load_report(args.compare[0]), load_report(args.compare[1])))
        return 0
    log = (lambda message: print(message, file=sys.stderr, flush=True))
    report = bench(args.items, device=args.device, warmup=args.warmup, iters=args.iters, threads=args.threads,
                   runners=args.runner or (), targets=args.target, img_size=args.img_size, baseline=not args.no_baseline,
                   ssh_options=args.ssh_option or (), remote_dir=args.remote_dir, log=log)
    report["command"] = args.command_line
    paths = write_report(report, args.out)
    print(markdown(report))
    print(f"\nreport: {paths['markdown']} (also {', '.join(p.name for k, p in paths.items() if k != 'markdown')})",
          file=sys.stderr)
    broken = [m for m in report["measurements"] if m["status"] in ("failed", "partial")]
    return 1 if broken else 0


def _add_model_args(parser: argparse.ArgumentParser, layer_norm: bool = True) -> None:
    parser.add_argument("model", help="variant name or alias (see `edgevit list`)")
    parser.add_argument("--weights", metavar="PATH",
                        help="checkpoint to load (.pth, .pth.tar, .bin, .safetensors; timm, official or edgevit layout)")
    parser.add_argument("--pretrained", action="store_true",
                        help="download the published weights (cached; offline, pass --weights instead)")
    parser.add_argument("--img-size", type=int, metavar="N", help="input size (position embeddings are resized)")
    parser.add_argument("--num-classes", type=int, metavar="N", help="classifier size (a new head is initialised)")
    if not layer_norm:  # converters pick the form their backend runs best
        return
    parser.add_argument("--layer-norm", choices=["native", "matmul"], default="native",
                        help="LayerNorm form in the exported graph: native, or matmul statistics (what XNNPACK "
                             "delegates) [default: native]")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .converters import TARGETS
    from .quantization.recipes import recipes_for

    parser = argparse.ArgumentParser(
        prog="edgevit", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="TNT, T2T-ViT, NesT and CrossViT from PyTorch to phones and edge boards.")
    parser.add_argument("--version", action="version", version=f"edgevit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    listing = commands.add_parser("list", help="list variants with params, MACs, input size and weights",
                                  description="List every registered variant (or those matching PATTERN).")
    listing.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'nest*' [default: *]")
    listing.add_argument("--family", choices=["tnt", "t2t", "nest", "crossvit"], help="only this family")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(run=cmd_list)

    info = commands.add_parser("info", help="config, preprocessing, params, MACs and export op census of a model",
                               description="Build a model, measure its parameters and MACs, export it strictly "
                                           "and list the ops of its graph.")
    _add_model_args(info)
    info.add_argument("--no-export", action="store_true", help="skip the export and op census (faster)")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(run=cmd_info)

    export = commands.add_parser("export", help="write a strict torch.export program (.pt2)",
                                 description="Export a model with static shapes (batch 1) after checking the "
                                             "export-clean contract, and save it with torch.export.save.")
    _add_model_args(export)
    export.add_argument("--out", default="edgevit-out", help="output directory [default: edgevit-out]")
    export.add_argument("--force", action="store_true", help="overwrite an existing file")
    export.set_defaults(run=cmd_export)
    convert = commands.add_parser(
        "convert", help="convert a model to verified ExecuTorch / Core ML / TFLite / ONNX bundles",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert a model to one or more targets. Each target gets a bundle directory "
                    "(OUT/VARIANT/TARGET-PRECISION) with the artifact, manifest.json and labels.txt, written "
                    "atomically. Each artifact is run in its own runtime and compared with PyTorch (Core ML "
                    "runs only on macOS; on Linux its package is inspected instead).",
        epilog="examples:\n  edgevit convert tnt_ti --target coreml\n"
               "  edgevit convert tnt_ti --weights runs/tnt_ti/best.pt --target executorch --quantize int8\n"
               "  edgevit convert nest_tiny_jx --pretrained --target all\n"
               "  edgevit convert t2t_vit_7 --weights 71.7_T2T_ViT_7.pth.tar --target tflite --nhwc")
    _add_model_args(convert, layer_norm=False)
    convert.add_argument("--target", nargs="+", default=["coreml"], metavar="TARGET",
                         help="executorch, coreml, tflite, onnx, or all [default: coreml]")
    convert.add_argument("--precision", choices=["fp32", "fp16"],
                         help="fp16: Core ML compute precision, TFLite fp16 weights, ONNX fp16 graph "
                              "[default: fp16 for coreml, fp32 otherwise]")
    convert.add_argument("--out", default="edgevit-out", help="output directory [default: edgevit-out]")
    convert.add_argument("--force", action="store_true", help="replace existing bundles")
    convert.add_argument("--no-verify", action="store_true", help="skip running the artifacts (faster)")
    convert.add_argument("--keep-failed", action="store_true",
                         help="keep a bundle whose verification failed, as DIR.failed, for debugging")
    convert.add_argument("--verbose", action="store_true",
                         help="show the toolchains' own warnings, logs and progress bars live instead of writing "
                              "them to OUT/MODEL/toolchains.log")
    convert.add_argument("--image-input", action="store_true",
                         help="coreml: take 0..255 RGB images (normalisation folded in) and add a classifier "
                              "output with labels, for Apple's Vision framework")
    convert.add_argument("--minimum-target", default="iOS16", help="coreml: minimum deployment target [iOS16]")
    convert.add_argument("--compute-units", default="ALL", choices=["ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"],
                         help="coreml: compute units [ALL]")
    convert.add_argument("--nhwc", action="store_true", help="tflite: NHWC input, as camera pipelines deliver")
    convert.add_argument("--uint8-input", action="store_true",
                         help="tflite: take 0..255 uint8 pixels, the mean/std normalisation inside the model "
                              "(logits stay float32)")
    convert.add_argument("--opset", type=int, default=20, help="onnx: opset, at least 18 [20]")
    quantizing = convert.add_argument_group(
        "quantization", "int8 and compressed bundles (TARGET-RECIPE). Recipes: " + "; ".join(
            f"{target}: {', '.join(r.name for r in recipes_for(target))}" for target in TARGETS)
        + ". LayerNorm, softmax, GELU, attention matmuls, residual adds and the T2T Performer stay float.")
    quantizing.add_argument("--quantize", metavar="RECIPE", help="quantization recipe (see above)")
    quantizing.add_argument("--calib", metavar="DATA",
                            help="calibration images from the train split: fashion-mnist, cifar10, cifar100 or an "
                                 "ImageFolder directory [fashion-mnist]")
    quantizing.add_argument("--calib-samples", type=int, default=256, metavar="N",
                            help="calibration images, class-balanced [256]")
    quantizing.add_argument("--data-dir", metavar="DIR", help="where --calib's files are [the source's default place]")
    quantizing.add_argument("--keep-float", action="append", metavar="MODULE",
                            help="keep this module (e.g. blocks.0.mlp.fc2) in float; repeatable")
    quantizing.add_argument("--max-drop", type=float, metavar="PTS",
                            help="accepted top-1 drop in points, measured on the test split of --calib in the "
                                 "artifact's own runtime (needs --weights from edgevit train); over it, the most "
                                 "int8-sensitive layers stay float (1, 2, 4, ...) until it fits; writes parity.md")
    quantizing.add_argument("--eval-samples", type=int, metavar="N",
                            help="with --max-drop: measure on a class-balanced N test images [the whole test split]")
    convert.set_defaults(run=cmd_convert)

    training = commands.add_parser(
        "train", help="train a float reference model on Fashion-MNIST (or CIFAR, an ImageFolder) at a small size",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a variant from scratch at a small input size (its patch geometry adapted below a "
                    "quarter of its native size), with AdamW, warm-up + cosine, label smoothing and light "
                    "augmentation (random crop; horizontal flip except on Fashion-MNIST). Evaluates top-1/top-5 on "
                    "the test split after each epoch and writes OUT/best.pt, OUT/last.pt and OUT/metrics.json. "
                    "best.pt carries the architecture and preprocessing: pass it to --weights of convert/info/export "
                    "without repeating --img-size or --in-chans.",
        epilog="examples:\n  edgevit train tnt_ti --data fashion-mnist --epochs 10\n"
               "  edgevit train nest_tiny --in-chans 3 --epochs 20 --out runs/nest3\n"
               "  edgevit train nest_tiny --out runs/nest3 --epochs 30 --resume\n"
               "  edgevit convert tnt_ti --weights runs/tnt_ti/best.pt --target tflite")
    training.add_argument("model", help="variant name or alias (see `edgevit list`)")
    training.add_argument("--data", help="fashion-mnist, cifar10, cifar100 or an ImageFolder directory [fashion-mnist]")
    training.add_argument("--data-dir", metavar="DIR", help="where the data files are [the source's default place]")
    training.add_argument("--img-size", type=int, metavar="N", help="input size [32]")
    training.add_argument("--in-chans", type=int, choices=[1, 3], help="input channels [the data's]")
    training.add_argument("--epochs", type=int, metavar="N", help="epochs (with --resume: may extend the run) [10]")
    training.add_argument("--batch-size", type=int, metavar="N", help="batch size [128]")
    training.add_argument("--lr", type=float, help="peak AdamW learning rate [1e-3]")
    training.add_argument("--weight-decay", type=float, help="AdamW weight decay [0.05]")
    training.add_argument("--label-smoothing", type=float, help="label smoothing [0.1]")
    training.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N [auto]")
    training.add_argument("--precision", choices=["fp32", "bf16"],
                          help="bf16: forward passes under bf16 autocast, weights and optimizer fp32; 2-3x faster "
                               "on GPUs and on CPUs with AMX or AVX512-BF16 (testing stays fp32) [fp32]")
    training.add_argument("--seed", type=int, help="seed of init, shuffling and augmentation [0]")
    training.add_argument("--train-samples", type=int, metavar="N", help="train on a class-balanced N images [all]")
    training.add_argument("--eval-samples", type=int, metavar="N", help="test on a class-balanced N images [all]")
    training.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    training.add_argument("--out", metavar="DIR", help="run directory [runs/MODEL]")
    training.add_argument("--resume", action="store_true",
                          help="continue OUT/last.pt with its optimizer, schedule, epoch and RNG state")
    training.add_argument("--force", action="store_true", help="start over in an OUT that holds a run")
    training.set_defaults(run=cmd_train)

    qat_parser = commands.add_parser(
        "qat", help="quantization-aware fine-tuning of a trained float model for one target's int8",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune the float model of `edgevit train` with the target's int8 fake-quant (PT2E QAT: "
                    "XNNPACK's quantizer for executorch, XNNPACK's with symmetric activations for onnx QDQ, "
                    "litert-torch's for tflite, CoreMLQuantizer for coreml), LayerNorm, softmax, GELU, attention "
                    "and the T2T Performer kept float, in the target's LayerNorm and conv forms, distilling the float "
                    "model's own predictions (--labels: fitting the labels). Reports test top-1 "
                    "of the float model, of int8 with calibrated ranges and after each QAT epoch, and writes "
                    "OUT/qat.pt (fine-tuned float weights + fake-quant state + metadata) and OUT/metrics.json. "
                    "Convert it with `edgevit convert MODEL --weights OUT/qat.pt --target TARGET` (bundle "
                    "TARGET-qat-int8).",
        epilog="examples:\n  edgevit qat t2t_vit_7 --weights runs/t2t_vit_7/best.pt --target tflite\n"
               "  edgevit qat tnt_ti --weights runs/tnt_ti/best.pt --target executorch --epochs 3 --lr 5e-5\n"
               "  edgevit convert t2t_vit_7 --weights runs/t2t_vit_7/qat-tflite/qat.pt --target tflite")
    qat_parser.add_argument("model", help="variant name or alias (see `edgevit list`)")
    qat_parser.add_argument("--weights", required=True, metavar="PATH",
                            help="the float checkpoint of `edgevit train` (runs/MODEL/best.pt)")
    qat_parser.add_argument("--target", required=True, choices=list(TARGETS),
                            help="whose int8 quantizer and LayerNorm and conv forms to train for")
    qat_parser.add_argument("--data", help="fashion-mnist, cifar10, cifar100 or an ImageFolder directory "
                                           "[what the float model was trained on]")
    qat_parser.add_argument("--data-dir", metavar="DIR", help="where the data files are [the source's default place]")
    qat_parser.add_argument("--epochs", type=int, metavar="N", help="QAT epochs [2]")
    qat_parser.add_argument("--lr", type=float, help="peak AdamW learning rate [1e-5]")
    qat_parser.add_argument("--batch-size", type=int, metavar="N", help="batch size [64]")
    qat_parser.add_argument("--train-samples", type=int, metavar="N",
                            help="fine-tune on a class-balanced N images [all]")
    qat_parser.add_argument("--eval-samples", type=int, metavar="N", help="test on a class-balanced N images [all]")
    qat_parser.add_argument("--seed", type=int, help="seed of shuffling, augmentation and calibration [0]")
    qat_parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N [auto]")
    qat_parser.add_argument("--keep-float", action="append", metavar="MODULE",
                            help="keep this module (e.g. blocks.0.mlp.fc2) in float; repeatable")
    qat_parser.add_argument("--labels", action="store_true",
                            help="fine-tune on the labels (label smoothing 0.1) instead of distilling the float "
                                 "model's predictions [distill]")
    qat_parser.add_argument("--out", metavar="DIR", help="output directory [the weights' folder/qat-TARGET]")
    qat_parser.add_argument("--force", action="store_true", help="replace an existing OUT/qat.pt")
    qat_parser.set_defaults(run=cmd_qat)

    checking = commands.add_parser(
        "parity", help="score float and converted bundles on held-out data; enforce accuracy budgets",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert trained float weights to every requested bundle and score the float model and each "
                    "artifact, in its own runtime, on the test split: top-1, top-5, drop vs float, agreement, "
                    "logit cosine and SNR, size, latency. Budgets: fp32 100% top-1 agreement, fp16 drop <= 0.1 "
                    "pt, int8 PTQ <= 0.5 pt, QAT <= 0.2 pt; a broken budget exits 1 and names the most "
                    "int8-sensitive layers. Writes OUT/parity.md, OUT/parity.json and BUNDLE/parity.json (shown "
                    "by edgevit bench).",
        epilog="examples:\n  edgevit parity t2t_vit_7 --weights runs/t2t_vit_7/best.pt --targets onnx tflite "
               "--quantize int8\n  edgevit parity t2t_vit_7 --weights runs/t2t_vit_7/best.pt --targets executorch "
               "--precisions --quantize int8 --max-drop 0.3\n  edgevit parity tnt_ti --weights best.pt --targets "
               "onnx tflite --precisions fp32 fp16 --quantize onnx:int8 tflite:dynamic-int8\n  edgevit parity tnt_ti "
               "--weights runs/tnt_ti/qat-executorch/qat.pt --targets executorch   # QAT vs its float best.pt")
    checking.add_argument("model", help="variant name or alias (see `edgevit list`)")
    checking.add_argument("--weights", metavar="PATH",
                          help="trained float checkpoint (edgevit train), or a qat.pt (edgevit qat)")
    checking.add_argument("--reference", metavar="PATH",
                          help="float checkpoint to measure drops against [--weights; for a qat.pt, the best.pt "
                               "it was fine-tuned from when it is unchanged]")
    checking.add_argument("--data", default="fashion-mnist",
                          help="fashion-mnist, cifar10, cifar100 or an ImageFolder directory [fashion-mnist]")
    checking.add_argument("--data-dir", metavar="DIR", help="where the data files are [the source's default place]")
    checking.add_argument("--targets", nargs="+", default=["onnx"], metavar="TARGET",
                          help="executorch, coreml, tflite, onnx, or all [onnx]")
    checking.add_argument("--precisions", nargs="*", metavar="PRECISION",
                          help="fp32, fp16 or TARGET:PRECISION; none: only the --quantize recipes "
                               "[each target's default: fp32, coreml fp16]")
    checking.add_argument("--quantize", nargs="+", metavar="RECIPE",
                          help="recipes for every target offering them, or TARGET:RECIPE (see edgevit convert)")
    checking.add_argument("--calib-samples", type=int, default=256, metavar="N",
                          help="calibration images from the train split [256]")
    checking.add_argument("--eval-samples", type=int, metavar="N",
                          help="score a class-balanced N test images [the whole test split]")
    checking.add_argument("--max-drop", type=float, metavar="PTS",
                          help="quantized budget in top-1 points (tightens 0.5/0.2); over it, keep the most "
                               "sensitive 1, 2, 4, ... layers float until the drop fits")
    checking.add_argument("--keep-float", action="append", metavar="MODULE",
                          help="keep this module float in every quantized bundle; repeatable")
    checking.add_argument("--threads", type=int, metavar="N", help="runtime threads [the runtime's default]")
    checking.add_argument("--verbose", action="store_true",
                          help="show the toolchains' own warnings and logs live instead of writing them to "
                               "OUT/bundles/MODEL/toolchains.log")
    checking.add_argument("--out", default="edgevit-parity", help="report directory; bundles in OUT/bundles "
                                                                   "[edgevit-parity]")
    checking.set_defaults(run=cmd_parity)

    bench = commands.add_parser(
        "bench", help="time bundles on this host, an Android phone, a Jetson board (or explain iOS)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure per-inference latency (mean, median, p90, p99, min, max, std, CV), load and "
                    "first-inference time, peak memory and, on Jetson, energy per inference. On the host each "
                    "bundle runs in its own process and bundles take turns, so their ratios survive a noisy "
                    "machine; eager PyTorch is timed too as the baseline. Writes report.json, report.csv, "
                    "report.md and plots to --out. A model name instead of a bundle converts it first (once, "
                    "into ~/.cache/edgevit/bundles or $EDGEVIT_CACHE).",
        epilog="examples:\n  edgevit bench edgevit-out/tnt_ti/executorch-fp32 edgevit-out/tnt_ti/tflite-fp32\n"
               "  edgevit bench t2t_vit_7 --iters 100 --threads 2\n"
               "  edgevit bench out/tnt_ti/tflite-fp32 --device android --runner ./benchmark_model\n"
               "  edgevit bench out/tnt_ti/onnx-fp32 --device jetson:nvidia@orin.local\n"
               "  edgevit bench --compare before/report.json after/report.json\n"
               "runners for phones and boards: see docs/bench.md")
    bench.add_argument("items", nargs="*", metavar="BUNDLE_OR_MODEL", help="bundle directories or model names")
    bench.add_argument("--device", default="host",
                       help="host, android[:SERIAL], jetson:USER@HOST[:PORT] or ios[:UDID] [default: host]")
    bench.add_argument("--warmup", type=int, default=10, metavar="N", help="untimed inferences first [10]")
    bench.add_argument("--iters", type=int, default=50, metavar="N", help="timed inferences per bundle [50]")
    bench.add_argument("--threads", type=int, metavar="N", help="CPU threads per runtime [the device's cores]")
    bench.add_argument("--runner", action="append", metavar="PATH",
                       help="android: benchmark_model / executor_runner binary to push (repeatable); jetson: "
                            "trtexec path on the board, or edgevit[:PYTHON] for edgevit's own runner there")
    bench.add_argument("--target", nargs="+", metavar="TARGET",
                       help="for model names: which targets to convert and time [what the device runs]")
    bench.add_argument("--img-size", type=int, metavar="N", help="for model names: input size to convert at")
    bench.add_argument("--no-baseline", action="store_true", help="host: skip the eager PyTorch baseline")
    bench.add_argument("--ssh-option", action="append", metavar="OPT",
                       help="jetson: extra ssh argument, e.g. -i ~/.ssh/jetson (repeatable; give as --ssh-option=-i ...)")
    bench.add_argument("--remote-dir", metavar="DIR",
                       help="jetson: where bundles go on the board [default: edgevit-bench in the user's home]")
    bench.add_argument("--out", default="edgevit-bench", help="report directory [default: edgevit-bench]")
    bench.add_argument("--compare", nargs="+", metavar="REPORT", help="print ratios between two reports (A B)")
    bench.set_defaults(run=cmd_bench)
    return parser


def _quiet_toolchains() -> None:
    """Toolchains log deprecation chatter and 'torchvision is not installed' lines that mean nothing to users."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*(TracerWarning|non-writable|_TORCH_OPS_REGISTRY).*")
    for name in ("torch", "torch.onnx", "torch._export", "torch.utils._pytree", "executorch", "coremltools",
                 "onnxscript", "absl", "torchao"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    _quiet_toolchains()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = "edgevit " + shlex.join(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except EdgevitError as exc:
        print(f"edgevit: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgevit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
