"""The `edgevit` command: argument parsing and printing only; the work happens in the Python API."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import EdgevitError

EPILOG = """examples:
  edgevit list                      every variant, with params, MACs, input size and weights
  edgevit list 'crossvit*'          only the CrossViT variants
  edgevit info tnt_ti               config, preprocessing, params, MACs and the exported-graph op census
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


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="variant name or alias (see `edgevit list`)")
    parser.add_argument("--weights", metavar="PATH",
                        help="checkpoint to load (.pth, .pth.tar, .bin, .safetensors; timm, official or edgevit layout)")
    parser.add_argument("--pretrained", action="store_true",
                        help="download the published weights (cached; offline, pass --weights instead)")
    parser.add_argument("--img-size", type=int, metavar="N", help="input size (position embeddings are resized)")
    parser.add_argument("--num-classes", type=int, metavar="N", help="classifier size (a new head is initialised)")
    parser.add_argument("--layer-norm", choices=["native", "matmul"], default="native",
                        help="LayerNorm form in the exported graph: native, or matmul statistics (what XNNPACK "
                             "delegates) [default: native]")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
