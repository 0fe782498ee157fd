"""`edgevit parity`: does every converted artifact still classify like the trained float model it came from?

The float model and each requested (target, precision or recipe) bundle are scored on the held-out test split,
the artifacts through their own runtimes (ONNX Runtime, the TFLite interpreter, the ExecuTorch runtime; Core ML
only on macOS, elsewhere the row says "not run"). Budgets are enforced: fp32 agrees with float on every top-1, fp16
loses at most 0.1 point of top-1, int8 PTQ 0.5, QAT 0.2. With `max_drop`, a quantized artifact over budget is
converted again with its most sensitive layers kept float (1, 2, 4, ... of them, ranked by
`edgevit.quantization.sensitivity`) until the measured drop fits.

    report = parity("t2t_vit_7", "runs/t2t_vit_7/best.pt", "fashion-mnist", ["onnx", "tflite"], ["int8"])
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .converters import RuntimeUnavailable, get_target, resolve_targets
from .console import toolchain_output_to
from .convert import DEFAULT_PRECISION, convert
from .errors import EdgevitError
from .verify import compare

# Drops are in points of top-1 (float top-1 % minus artifact top-1 %); fp32 is judged on agreement instead.
BUDGETS = {"fp32_agreement": 100.0, "fp16": 0.1, "ptq": 0.5, "qat": 0.2}
SENSITIVITY_IMAGES = 32
WORST_LAYERS = 5
PARITY_FILE = "parity.json"  # what `edgevit bench` reads from a bundle (edgevit.bench.harness.PARITY_FILE)


@dataclass
class ParityReport:
    model: str
    weights: str
    data: str                 # the evaluation images, e.g. "fashion-mnist/test"
    eval_images: int
    calibration: str          # the train-split sample int8 recipes calibrate on (and sensitivity uses)
    keep_float: list[str]     # modules kept float in every quantized bundle, besides what --max-drop chose
    reference: dict           # the float model's top-1, top-5, latency
    rows: list[dict]          # one per (target, precision or recipe); see `COLUMNS` for what is shown
    failures: list[str] = field(default_factory=list)  # one line per broken budget or failed artifact
    out: Path | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return _json_safe({**asdict(self), "out": str(self.out), "passed": self.passed})


def trained_with_qat(model) -> bool:
    """Whether the weights came from quantization-aware training, by their checkpoint metadata.

    A hook for `edgevit qat` checkpoints: a metadata `kind` of "edgevit-qat" or a truthy "qat" entry. Pass
    `qat=` to `parity` where the metadata says neither.
    """
    metadata = getattr(getattr(model, "load_report", None), "metadata", None) or {}
    return metadata.get("kind") == "edgevit-qat" or bool(metadata.get("qat"))


def parity(model_name: str, weights: str | Path, data: str = "fashion-mnist", targets=("onnx",), recipes=(),
           precisions=None, *, data_dir: str | None = None, calib_samples: int = 256, eval_samples: int | None = None,
           out: str | Path = "edgevit-parity", max_drop: float | None = None, budgets: dict | None = None,
           keep_float=(), qat: bool | None = None, threads: int | None = None,
           sensitivity_images: int = SENSITIVITY_IMAGES, bundles_out: str | Path | None = None,
           reference_weights: str | Path | None = None, quiet_toolchains: bool = False,
           log: Callable[[str], None] = lambda message: None) -> ParityReport:
    """Convert the trained float model to every requested bundle, score all on held-out data, judge the budgets.

    `recipes` and `precisions` are names ("int8", "fp16") that apply to every target offering them, or
    TARGET:NAME ("tflite:dynamic-int8") for one target. `precisions=None` means each target's default (fp32;
    Core ML fp16); `[]` converts only the recipes. Bundles go to `bundles_out` (default OUT/bundles), the report
    to OUT/parity.json and OUT/parity.md, and each bundle gets its own parity.json. `eval_samples` scores a
    class-balanced part of the test split (default: all of it). `max_drop` (points) tightens the quantized budget and lets a quantized artifact
    over it keep its most sensitive layers float until it fits; `keep_float` modules stay float in every quantized
    bundle (as `convert`'s float_modules); `budgets` overrides `BUDGETS`; `sensitivity_images` train and test
    images rank the layers. `reference_weights`: the float checkpoint drops and agreement are measured against
    (default `weights`; for a qat.pt, the float checkpoint it was fine-tuned from when that is still there and
    unchanged, else its own fine-tuned float weights). `quiet_toolchains`: as `convert`'s
    (BUNDLES/MODEL/toolchains.log, runtimes included).
    Raises `EdgevitError` for bad input; broken budgets are `report.failures`.
    """
    from .data.datasets import batches, calibration_and_evaluation, check_compatible
    from .models import create_model
    from .quantization.sensitivity import graph_quantizer

    if not weights:
        raise EdgevitError("parity needs the trained float weights: --weights PATH (e.g. runs/MODEL/best.pt from "
                           "`edgevit train`)")
    if not Path(weights).is_file():
        raise EdgevitError(f"weights {weights} not found")
    reference_weights = _reference_weights(weights, reference_weights)
    budgets = {**BUDGETS, **(budgets or {})}
    jobs, skipped = _qat_jobs(weights, targets, recipes, precisions) or _jobs(resolve_targets(targets),
                                                                            list(recipes), precisions)
    if not jobs:
        raise EdgevitError("nothing to check: give --precisions or --quantize recipes the targets offer")
    model = create_model(model_name, weights=weights)
    cfg = model.pretrained_cfg
    reference_model = model if reference_weights == Path(weights) else create_model(model_name,
                                                                                     weights=reference_weights)
    calibration, evaluation = calibration_and_evaluation(data, data_dir, calib_samples, eval_samples)
    check_compatible(evaluation, cfg["num_classes"], cfg["input_size"][0])
    qat = trained_with_qat(model) if qat is None else qat
    out = Path(out)
    bundles = Path(bundles_out) if bundles_out is not None else out / "bundles"

    with torch.no_grad():
        float_logits = np.concatenate([reference_model(x).float().numpy() for x, _ in batches(evaluation, cfg)])
    top1, top5 = _accuracy(float_logits, evaluation.labels)
    reference = {"top1": top1, "top5": top5, "latency_ms": _eager_latency(reference_model, cfg),
                 "weights": str(reference_weights)}
    log(f"float {model.variant} ({reference_weights}): top-1 {top1:.2f}%, top-5 {top5:.2f}% on {len(evaluation)} "
        f"{evaluation.name} images")

    def build_and_score(target: str, precision: str, recipe: str | None, float_layers=()) -> dict:
        """`float_layers`: what the --max-drop search keeps float, on top of `keep_float`."""
        # `weights` too: convert reads a qat.pt's own plan (QuantizationPlan.from_qat) from the file
        [outcome] = convert(model, [target], out=bundles, weights=weights, precision=None if recipe else precision,
                            quantize=recipe, calib=data, calib_samples=calib_samples, data_dir=data_dir,
                            float_modules=(*keep_float, *float_layers), force=True,
                            quiet_toolchains=quiet_toolchains, log=log)
        row = {"target": target, "precision": outcome.precision, "recipe": recipe,
               "kind": ("qat" if qat else "ptq") if recipe else precision, "float_layers": list(float_layers),
               "size_bytes": outcome.size_bytes, "bundle": str(outcome.bundle) if outcome.bundle else None}
        if outcome.status != "ok":
            return {**row, "status": "failed", "reason": outcome.error}
        with toolchain_output_to(outcome.toolchain_log):
            row.update(_score(target, outcome.bundle, evaluation, cfg, float_logits, threads))
        if row.get("top1") is not None:
            row["top1_drop"] = top1 - row["top1"]
        return row

    sensitivities: dict[tuple[str, str], list] = {}

    def ranking(target: str, recipe: str) -> list:
        if (target, recipe) not in sensitivities:
            log(f"{target} {recipe}: ranking layers by int8 sensitivity ...")
            sensitivities[target, recipe] = _sensitivity(model, cfg, target, recipe, calibration, evaluation,
                                                         sensitivity_images, keep_float)
        return sensitivities[target, recipe]

    rows, failures = [], []
    for target, precision, recipe in jobs:
        row = build_and_score(target, precision, recipe)
        budget, limit = _budget(row["kind"], budgets, max_drop)
        if recipe and row["kind"] == "ptq" and max_drop is not None and _over(row, limit):  # QAT: fixed layers
            row = _fit(row, ranking(target, recipe), limit,
                       lambda layers: build_and_score(target, precision, recipe, layers), log)
        row["budget"] = budget
        problem = _judge(row, limit, budgets)
        if problem:
            failures.append(f"{target} {row['precision']}: {problem}")
            if row["status"] == "ok":
                row["status"] = "over budget"
                if recipe:
                    row["worst_layers"] = ranking(target, recipe)[:WORST_LAYERS]
        if recipe and (target, recipe) in sensitivities:
            row["sensitivity"] = sensitivities[target, recipe]  # the whole ranking, worst first (JSON only)
            row["sensitivity_proxy"] = graph_quantizer(target, recipe)[1]
        rows.append(row)
        if row.get("bundle"):
            _write_bundle_parity(row, reference, evaluation.name, len(evaluation), str(weights))
    rows += skipped
    report = ParityReport(model.variant, str(weights), evaluation.name, len(evaluation), calibration.name,
                          list(keep_float), reference, rows, failures, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "parity.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    (out / "parity.md").write_text(markdown(report))
    return report


def quantize_within_budget(model_name: str, weights: str | Path, targets, recipe: str, max_drop: float,
                           data: str = "fashion-mnist", *, out: str | Path = "edgevit-out", force: bool = False,
                           keep_failed: bool = False, **options) -> ParityReport:
    """`edgevit convert --quantize RECIPE --max-drop PTS`: quantize for each target, measure the top-1 drop against
    the float model on the test split of `data` (the calibration source) in the artifact's own runtime, and keep
    the most int8-sensitive layers float until the drop is at most `max_drop` points.

    Bundles land where `convert` puts them (OUT/VARIANT/TARGET-PRECISION, each with its parity.json), the report in
    OUT/parity.md and OUT/parity.json. A bundle that cannot meet the budget is removed, or kept as DIR.failed with
    `keep_failed`; `report.failures` says what was tried. `options` go to `parity` (calib_samples, eval_samples,
    data_dir, keep_float, threads, log).
    """
    from .convert import bundle_dir
    from .converters.bundle import check_destination, discard
    from .models import resolve_name
    from .quantization.recipes import get_recipe

    if max_drop is None:
        raise EdgevitError("--max-drop takes the accepted top-1 drop in points, e.g. --max-drop 0.5")
    variant = resolve_name(model_name)
    for target in resolve_targets(targets):
        check_destination(bundle_dir(Path(out), variant, target, get_recipe(target, recipe).precision), force)
    report = parity(model_name, weights, data, targets, [recipe], [], max_drop=max_drop, out=out, bundles_out=out,
                    **options)
    for row in report.rows:
        if row.get("status") == "over budget" and row.get("bundle"):
            kept = discard(row["bundle"], keep_failed=keep_failed)
            row["bundle"] = str(kept) if kept else None
    return report


def _reference_weights(weights, reference_weights) -> Path:
    from .quantization.qat import float_origin

    if reference_weights is not None:
        if not Path(reference_weights).is_file():
            raise EdgevitError(f"reference weights {reference_weights} not found")
        return Path(reference_weights)
    return float_origin(weights) or Path(weights)


def _qat_jobs(weights, targets, recipes, precisions) -> tuple[list[tuple], list[dict]] | None:
    """A qat.pt of `edgevit qat` converts only to its own int8 model (recipe qat-int8), on each target."""
    from .quantization.qat import QAT_RECIPE, read_qat

    if read_qat(weights) is None:
        return None
    if precisions or any(spec.rpartition(":")[2] != QAT_RECIPE for spec in recipes):
        raise EdgevitError(f"{weights} is quantization-aware trained: parity checks its own {QAT_RECIPE} model "
                           "only; drop --precisions and --quantize")
    return [(target, QAT_RECIPE, QAT_RECIPE) for target in resolve_targets(targets)], []


def _jobs(targets: list[str], recipes: list[str], precisions) -> tuple[list[tuple], list[dict]]:
    """(target, precision, recipe or None) to convert, and "skipped" rows for what a target lacks."""
    from .quantization.recipes import get_recipe

    jobs, skipped = [], []

    def scoped(spec: str) -> tuple[list[str], str, bool]:
        target, _, name = spec.rpartition(":")
        if target and target not in targets:
            raise EdgevitError(f"{spec}: {target} is not among the targets ({', '.join(targets)})")
        return ([target] if target else targets), name, bool(target)

    for spec in precisions if precisions is not None else [None]:
        chosen, name, explicit = scoped(spec) if spec else (targets, None, False)
        if name is not None and name not in ("fp32", "fp16"):
            raise EdgevitError(f"unknown precision {name!r}: fp32 or fp16 (int8 and the rest are --quantize recipes)")
        for target in chosen:
            precision = name or DEFAULT_PRECISION.get(target, "fp32")
            if precision in get_target(target).PRECISIONS:
                jobs.append((target, precision, None))
            elif explicit:
                raise EdgevitError(f"{target} has no {precision} precision; it offers "
                                   f"{', '.join(get_target(target).PRECISIONS)}")
            else:
                skipped.append({"target": target, "precision": precision, "status": "skipped",
                                "reason": f"{target} has no {precision} path"})
    for spec in recipes:
        chosen, name, explicit = scoped(spec)
        errors = []
        for target in chosen:
            try:
                get_recipe(target, name)
                jobs.append((target, name, name))
            except EdgevitError as exc:
                errors.append(str(exc))
                skipped.append({"target": target, "precision": name, "status": "skipped", "reason": str(exc)})
        if errors and (explicit or len(errors) == len(chosen)):
            raise EdgevitError(" ".join(errors))
    return list(dict.fromkeys(jobs)), skipped


def _budget(kind: str, budgets: dict, max_drop: float | None) -> tuple[str, float | None]:
    """(what the row is held to, the drop limit in points; None where agreement is judged)."""
    if kind == "fp32":
        return f"top-1 agreement {budgets['fp32_agreement']:g}%", None
    limit = budgets[kind]
    if kind in ("ptq", "qat") and max_drop is not None:
        limit = min(limit, max_drop)  # --max-drop can only tighten an enforced budget
    name = {"fp16": "fp16", "ptq": "int8 PTQ", "qat": "QAT"}[kind]
    return f"drop <= {limit:g} pt ({name})", limit


def _over(row: dict, limit: float | None) -> bool:
    return row["status"] == "ok" and limit is not None and row["top1_drop"] > limit + 1e-9


def _judge(row: dict, limit: float | None, budgets: dict) -> str | None:
    """One line on what breaks the row's budget, or None ("not run" and "skipped" rows break nothing)."""
    if row["status"] == "failed":
        return f"conversion or run failed: {row.get('reason')}"
    if row["status"] != "ok":
        return None
    if limit is None:  # fp32
        needed = budgets["fp32_agreement"]
        return (f"top-1 agreement with float {row['agreement']:.2f}% < {needed:g}% (fp32 budget)"
                if row["agreement"] < needed else None)
    if not _over(row, limit):
        return None
    line = f"top-1 drop {row['top1_drop']:.2f} pt > {limit:g} pt ({row['budget']})"
    if row.get("attempts"):
        tried = ", ".join(f"{len(a['float_layers'])} float: " + ("failed" if a["top1_drop"] is None
                                                                  else f"{a['top1_drop']:.2f} pt")
                          for a in row["attempts"])
        line += f"; nothing fits, tried {row['recipe']} with {tried}"
    return line


def _fit(row: dict, ranking: list, limit: float, attempt: Callable[[list], dict], log) -> dict:
    """Keep the 1, 2, 4, ... most sensitive layers float until the drop fits `limit` (never all of them: that
    would not be a quantized model). Returns the last attempt's row, with every attempt listed."""
    attempts = [{"float_layers": [], "top1_drop": row.get("top1_drop")}]
    count = 1
    while count < len(ranking) and _over(row, limit):
        layers = [name for name, _ in ranking[:count]]
        log(f"{row['target']} {row['recipe']}: drop {row['top1_drop']:.2f} pt > {limit:g} pt; keeping {count} "
            f"layer(s) float ...")
        row = attempt(layers)
        attempts.append({"float_layers": layers, "top1_drop": row.get("top1_drop")})
        count *= 2
    row["attempts"] = attempts
    return row


def _sensitivity(model, cfg, target, recipe, calibration, evaluation, count: int,
                 keep_float) -> list[tuple[str, float]]:
    from .data.datasets import balanced_indices
    from .data.transforms import to_model_input
    from .quantization.sensitivity import layer_sensitivity

    def sample(images):
        return to_model_input(images.subset(balanced_indices(images.labels, min(count, len(images)))).images, cfg)
    example = torch.zeros(1, *cfg["input_size"])
    return layer_sensitivity(model, example, target, recipe, sample(calibration), sample(evaluation), keep_float)


def _score(target: str, bundle: Path, evaluation, cfg: dict, float_logits: np.ndarray, threads) -> dict:
    """The artifact in its own runtime over the evaluation images: accuracy, agreement, cosine, SNR, latency."""
    from .converters.bundle import read_bundle
    from .data.datasets import batches
    from .quantization.sensitivity import snr_db

    try:
        predict = get_target(target).load(read_bundle(bundle).artifact, threads)
    except RuntimeUnavailable as exc:
        return {"status": "not run", "reason": str(exc)}
    logits, seconds = [], []
    try:
        for x, _ in batches(evaluation, cfg):
            for image in x.numpy():
                start = time.perf_counter()
                result = predict(image)
                seconds.append(time.perf_counter() - start)  # per image, in-process: a short latency figure
                logits.append(np.asarray(result, dtype=np.float32).reshape(-1))
    except Exception as exc:  # the artifact exists but its runtime rejects it: a failed row, not a crash
        return {"status": "failed", "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    logits = np.stack(logits)
    metrics = compare(float_logits, logits)
    top1, top5 = _accuracy(logits, evaluation.labels)
    return {"status": "ok", "top1": top1, "top5": top5, "agreement": 100.0 * metrics["top1_agreement"],
            "cosine_mean": metrics["cosine_mean"], "cosine_min": metrics["cosine_min"],
            "snr_db": snr_db(float_logits, logits), "latency_ms": 1e3 * statistics.median(seconds)}


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    best = np.argsort(-logits, axis=1)[:, :min(5, logits.shape[1])]
    return 100.0 * float((best[:, 0] == labels).mean()), 100.0 * float((best == labels[:, None]).any(1).mean())


def _eager_latency(model, cfg: dict, runs: int = 20) -> float:
    """Median eager batch-1 latency in ms, the reference row's figure."""
    x = torch.zeros(1, *cfg["input_size"])
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(runs):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _write_bundle_parity(row: dict, reference: dict, data: str, images: int, weights: str) -> None:
    keys = ("top1", "top5", "agreement", "cosine_mean", "cosine_min", "snr_db", "latency_ms", "status", "budget",
            "float_layers", "reason")
    entry = {"top1_drop": row.get("top1_drop"), "float_top1": reference["top1"],
             "float_weights": reference["weights"], "data": data, "eval_images": images,
             "weights": weights, **{key: row.get(key) for key in keys}}
    (Path(row["bundle"]) / PARITY_FILE).write_text(json.dumps(_json_safe(entry), indent=1) + "\n")


def _json_safe(value):
    """JSON has no inf/nan (an fp32 artifact can match float exactly: infinite SNR); tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


COLUMNS = ["target", "precision", "top-1 %", "top-5 %", "drop pt", "agreement %", "cosine mean / min", "SNR dB",
           "size MB", "median ms", "status"]


def table_rows(report: ParityReport) -> list[list[str]]:
    def number(value, digits=2):
        if value is None:
            return "-"
        return "inf" if math.isinf(value) else f"{value:.{digits}f}"

    ref = report.reference
    rows = [["pytorch", "float", number(ref["top1"]), number(ref["top5"]), "0.00", "100.00", "1 / 1", "inf", "-",
             number(ref["latency_ms"]), "reference"]]
    for row in report.rows:
        cosine = (f"{row['cosine_mean']:.5f} / {row['cosine_min']:.5f}" if row.get("cosine_mean") is not None else "-")
        size = row["size_bytes"] / 1e6 if row.get("size_bytes") else None
        status = row["status"] + (f" ({len(row['float_layers'])} float)" if row.get("float_layers") else "")
        rows.append([row["target"], row["precision"], number(row.get("top1")), number(row.get("top5")),
                     number(row.get("top1_drop")), number(row.get("agreement")), cosine, number(row.get("snr_db"), 1),
                     number(size), number(row.get("latency_ms")), status])
    return rows


def drop_sampling_error(row: dict, images: int) -> float | None:
    """About two standard errors of a row's top-1 drop, in points. Only the images on which the artifact and the
    float model disagree move the drop, and on a sample of `images` their count varies by about its square root."""
    if row.get("status") != "ok" or row.get("agreement") is None:
        return None
    disagreements = round((100.0 - row["agreement"]) / 100.0 * images)
    return 200.0 * math.sqrt(disagreements) / images


def _sampling_error_note(report: ParityReport) -> list[str]:
    errors = [(error, row) for row in report.rows
              if (error := drop_sampling_error(row, report.eval_images))]
    if not errors:
        return []
    error, row = max(errors, key=lambda pair: pair[0])
    return [f"Sampling error: on {report.eval_images} images one image is {100.0 / report.eval_images:.2f} pt, and a "
            f"drop is known to about ±2·√(disagreements)/images, at most ±{error:.2f} pt here ({row['target']} "
            f"{row['precision']}); a drop within that of its budget needs more test images to tell.", ""]


def markdown(report: ParityReport) -> str:
    compared = report.reference.get("weights", report.weights)  # reports from before it was recorded: weights
    against = f" (float reference `{compared}`)" if Path(compared) != Path(report.weights) else ""
    lines = [f"# Parity: {report.model}", "",
             f"Weights `{report.weights}`{against}; {report.eval_images} held-out images of {report.data}; int8 "
             f"calibration from {report.calibration}. Drop = float top-1 minus artifact top-1, in points; agreement, cosine and "
             "SNR compare each artifact's logits with the float model's. Latency: median per image, in-process."
             + (f" Kept float in every quantized bundle: {', '.join(report.keep_float)}." if report.keep_float else ""),
             "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    lines += ["", "Budgets: fp32 100 % top-1 agreement; fp16 drop <= 0.1 pt; int8 PTQ <= 0.5 pt; QAT <= 0.2 pt.", ""]
    lines += _sampling_error_note(report)
    if report.failures:
        lines += ["## Broken budgets", ""] + [f"- {line}" for line in report.failures] + [""]
    for row in report.rows:
        name = f"{row['target']} {row['precision']}"
        if row.get("worst_layers"):
            lines += [f"Worst layers of {name} (output SNR with only that layer in int8): "
                      + ", ".join(f"`{layer}` {snr:.1f} dB" for layer, snr in row["worst_layers"])
                      + (f" ({row['sensitivity_proxy']})" if row.get("sensitivity_proxy") else ""), ""]
        if row.get("attempts"):
            lines += [f"Layers kept float for {name}: " + (", ".join(f"`{m}`" for m in row["float_layers"]) or "none"),
                      ""] + [f"- {row['recipe']}, {len(a['float_layers'])} float layer(s): drop "
                             + ("failed" if a["top1_drop"] is None else f"{a['top1_drop']:.2f} pt")
                             for a in row["attempts"]] + [""]
        if row.get("reason") and row["status"] in ("not run", "skipped", "failed"):
            lines += [f"{name} {row['status']}: {row['reason']}", ""]
    return "\n".join(lines)
