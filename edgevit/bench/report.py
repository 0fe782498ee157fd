"""Turn a bench report dict into files people read (Markdown, plots) and tools read (JSON, CSV); compare two runs.

The report dict itself is built by the bench runner; this module only formats it, so it never changes a number.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import warnings
from pathlib import Path

from ..errors import EdgevitError

SCHEMA_VERSION = 1  # the newest report layout this module understands
COLUMNS = ["bundle", "target", "precision", "status", "size MB", "median ms", "p90 ms", "FPS", "memory MB",
           "energy mJ", "top-1 drop"]
STATS = ("mean", "median", "p90", "p99", "min", "max", "std", "cv")
CSV_FIELDS = ["name", "bundle", "variant", "target", "precision", "runtime", "status", "threads",
              *(s if s == "cv" else f"{s}_ms" for s in STATS), "samples", "load_ms", "first_inference_ms",
              "memory_mb", "memory_kind", "size_mb", "energy_mj", "energy_note", "top1_drop", "fraction_of_peak",
              "gmacs", "error"]


def _fmt(value, digits: int | None = None, suffix: str = "") -> str:
    """The one number formatter: fixed `digits`, or by default 2 decimals below 10 and 1 above; "—" when missing."""
    if value is None or value != value:  # None or NaN
        return "—"
    if digits is None:
        digits = 2 if abs(value) < 10 else 1
    return f"{value:.{digits}f}{suffix}"


def _pct(fraction, digits: int | None = None) -> str:
    return _fmt(None if fraction is None else fraction * 100, digits, " %")


def _stat(measurement: dict | None, key: str):
    return ((measurement or {}).get("latency_ms") or {}).get(key)


def _first_line(text) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0] if lines else ""


def _status(m: dict) -> str:
    status = m.get("status") or "?"
    if status == "unstable":
        return f"unstable (CV {_pct(_stat(m, 'cv'), 0)})"
    if m.get("error") and status in ("failed", "partial", "skipped"):
        return f"{status}: {_first_line(m['error'])}"
    return status


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _row(m: dict) -> list[str]:
    median = _stat(m, "median")
    fps = 1000 / median if median else None
    return [_cell(m.get("name", "?")), m.get("target") or "—", m.get("precision") or "—", _cell(_status(m)),
            _fmt(m.get("size_mb"), 1), _fmt(median), _fmt(_stat(m, "p90")), _fmt(fps), _fmt(m.get("memory_mb"), 1),
            _fmt(m.get("energy_mj")), _fmt(m.get("top1_drop"))]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _when(report: dict) -> str:
    return str(report.get("created") or "")[:16].replace("T", " ")


def _environment(env: dict) -> str:
    machine = ", ".join(str(v) for v in (env.get("cpu"), env.get("cores") and f"{env['cores']} cores", env.get("os"))
                        if v)
    parts = [machine] if machine else []
    if env.get("matmul_peak_gflops"):
        parts.append(f"matmul peak {_fmt(env['matmul_peak_gflops'])} GFLOP/s")
    if env.get("runtimes"):
        parts.append("runtimes: " + ", ".join(f"{k} {v}" for k, v in env["runtimes"].items()))
    return "**Environment:** " + ("; ".join(parts) or "not recorded")


def _how_measured(report: dict) -> str:
    s = report.get("settings") or {}
    text = f"{s.get('warmup', '?')} warm-up runs, then {s.get('iters', '?')} timed runs per bundle"
    if s.get("threads"):
        text += f", {s['threads']} threads"
    turn = f"{s['chunk']} inferences" if s.get("chunk") else "a few inferences"
    text += (f", each in its own process, taking turns of {turn} (so drift and heat hit all alike)"
             if s.get("interleaved") else ", one bundle after another")
    kinds = sorted({m["memory_kind"] for m in report["measurements"] if m.get("memory_kind")})
    memory = f"; memory is {' / '.join(kinds)}" if kinds else ""
    return (f"**How measured:** {text}. Latency is wall time per inference, FPS = 1000 / median{memory}; "
            "top-1 drop is in points versus the float model (edgevit parity).")


def _notes(report: dict) -> list[str]:
    ms, peak = report["measurements"], (report.get("environment") or {}).get("matmul_peak_gflops")
    notes = []
    unstable = [f"{m['name']} (CV {_pct(_stat(m, 'cv'), 0)})" for m in ms if m.get("status") == "unstable"]
    if unstable:
        notes.append(f"- **Unstable** (CV above 10 %): {', '.join(unstable)}. Their medians can move between runs "
                     "by more than the differences being compared; rerun on an idle, cool device or with more "
                     "iterations before drawing conclusions.")
    partial = [m["name"] for m in ms if m.get("status") == "partial"]
    if partial:
        notes.append(f"- **Partial**: {', '.join(partial)}: the runner died mid-run; statistics cover only the "
                     "samples taken.")
    for m in ms:
        if m.get("error"):
            notes.append(f"- **Error, {m['name']}** ({m.get('status')}):\n\n  ```\n"
                         + "\n".join("  " + line for line in str(m["error"]).strip().splitlines()) + "\n  ```")
    notes += [f"- **Energy, {m['name']}:** {m['energy_note']}" for m in ms if m.get("energy_note")]
    for m in ms:
        if m.get("fraction_of_peak") is not None:
            peak_text = f" ({_fmt(peak)} GFLOP/s)" if peak else ""
            macs = f" at {_fmt(m['gmacs'])} GMACs per inference" if m.get("gmacs") is not None else ""
            notes.append(f"- **Compute, {m['name']}:** {_pct(m['fraction_of_peak'])} of the device's matmul "
                         f"peak{peak_text}{macs}.")
    return notes + [f"- {_how_measured(report)}"]


def markdown(report: dict) -> str:
    """A one-page summary: header, environment, one table row per measurement, then notes."""
    lines = [f"# edgevit bench: {report.get('device', '?')}, {_when(report)}", "",
             f"`{report.get('command', '')}`", "", _environment(report.get("environment") or {}), "",
             *_table(COLUMNS, [_row(m) for m in report["measurements"]]), "", "## Notes", "", *_notes(report)]
    return "\n".join(lines) + "\n"


def _csv_row(m: dict) -> dict:
    row = {k: m.get(k) for k in CSV_FIELDS}
    row.update({s if s == "cv" else f"{s}_ms": _stat(m, s) for s in STATS})
    row["samples"] = len(m.get("samples_ms") or [])
    return row


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _latency_plot(report: dict, path: Path) -> None:
    from matplotlib.figure import Figure  # a bare Figure renders with Agg and leaves pyplot's global state alone

    timed = [m for m in report["measurements"] if m.get("samples_ms")]
    fig = Figure(figsize=(max(6, 1.2 * len(timed) + 2), 5), layout="constrained")
    ax = fig.subplots()
    ax.set_title(f"Latency per inference, {report.get('device', '?')} (red: unstable, CV > 10 %)")
    if not timed:
        _note(ax, "no latency samples (every run failed or was skipped)")
    else:
        # Default (vertical) orientation: its keyword changed name across matplotlib versions, the default did not.
        boxes = ax.boxplot([m["samples_ms"] for m in timed], patch_artist=True, medianprops={"color": "black"})
        for box, m in zip(boxes["boxes"], timed):
            box.set_facecolor("tomato" if m.get("status") == "unstable" else "lightsteelblue")
        labels = [m["name"] + (f"\n{_status(m)}" if m.get("status") not in (None, "ok") else "") for m in timed]
        ax.set_xticks(range(1, len(timed) + 1), labels, rotation=30, ha="right")
        ax.set_ylabel("latency (ms)")
        ax.set_ylim(bottom=0)  # linear from zero so box sizes compare honestly
    fig.savefig(path, dpi=120)


def _pareto_plot(report: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    points = sorted(((_stat(m, "median"), m["top1_drop"], m["name"]) for m in report["measurements"]
                     if m.get("top1_drop") is not None and _stat(m, "median") is not None))
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.subplots()
    ax.set_title("Speed vs accuracy (lower left is better)")
    if not points:
        _note(ax, "no parity results yet (run edgevit parity)")
    else:
        ax.scatter([p[0] for p in points], [p[1] for p in points])
        for x, y, name in points:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front, best = [], float("inf")
        for x, y, _ in points:  # sorted by latency: a point is on the front when it beats every faster one
            if y < best:
                front.append((x, y))
                best = y
        ax.plot(*zip(*front), "--", color="grey", label="Pareto front")
        ax.axhline(0, color="lightgrey", linewidth=1)  # no accuracy loss
        ax.set_xlim(left=0)
        ax.legend()
        ax.set_xlabel("median latency (ms)")
        ax.set_ylabel("top-1 drop vs float (points)")
    fig.savefig(path, dpi=120)


def write_report(report: dict, out_dir) -> dict[str, Path]:
    """Write report.json, report.csv, report.md, latency.png and pareto.png into out_dir (made if missing).

    Returns {"json", "csv", "markdown", "latency", "pareto"} -> path. pareto.png is always written, with a
    centred note when no measurement has a top1_drop, so a run's file set is always the same. Without
    matplotlib the two plots are skipped with a warning and left out of the returned dict.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "csv": out / "report.csv", "markdown": out / "report.md"}
    # default=str: a stray Path or datetime must not lose a whole benchmark run at the last step
    paths["json"].write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    with paths["csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        writer.writerows(_csv_row(m) for m in report["measurements"])
    paths["markdown"].write_text(markdown(report), encoding="utf-8")
    if importlib.util.find_spec("matplotlib") is None:  # not a core dependency
        warnings.warn("matplotlib is not installed: skipped latency.png and pareto.png (pip install matplotlib)")
        return paths
    paths["latency"], paths["pareto"] = out / "latency.png", out / "pareto.png"
    _latency_plot(report, paths["latency"])
    _pareto_plot(report, paths["pareto"])
    return paths


def load_report(path) -> dict:
    """Read a report.json, or the report.json inside a directory; EdgevitError when it is not a bench report."""
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    if not file.is_file():
        raise EdgevitError(f"no bench report at {file}: pass a report.json or the directory edgevit bench wrote")
    try:
        report = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise EdgevitError(f"{file} is not a bench report: not valid JSON ({e})") from None
    if (not isinstance(report, dict) or not isinstance(report.get("schema_version"), int)
            or not isinstance(report.get("measurements"), list)):
        raise EdgevitError(f"{file} is not an edgevit bench report (needs schema_version and measurements)")
    if report["schema_version"] > SCHEMA_VERSION:
        raise EdgevitError(f"{file} has report schema {report['schema_version']}, newer than this edgevit "
                           f"understands ({SCHEMA_VERSION}): upgrade edgevit")
    return report


def compare_reports(a: dict, b: dict) -> list[dict]:
    """One dict per measurement name in A then B-only names: values from both, B/A ratios, and `match`."""
    in_a = {m["name"]: m for m in a["measurements"]}
    in_b = {m["name"]: m for m in b["measurements"]}
    rows = []
    for name in [*in_a, *(n for n in in_b if n not in in_a)]:
        ma, mb = in_a.get(name), in_b.get(name)
        row = {"name": name, "match": "both" if ma and mb else "only in A" if ma else "only in B",
               "status_a": ma and ma.get("status"), "status_b": mb and mb.get("status")}
        for key, va, vb in (("median", _stat(ma, "median"), _stat(mb, "median")),
                            ("p90", _stat(ma, "p90"), _stat(mb, "p90")),
                            ("size", (ma or {}).get("size_mb"), (mb or {}).get("size_mb"))):
            row.update({f"{key}_a": va, f"{key}_b": vb, f"{key}_ratio": vb / va if va and vb is not None else None})
        rows.append(row)
    return rows


def compare_markdown(a: dict, b: dict) -> str:
    """The comparison as a Markdown page; ratios are B/A, so below 1 means B is faster or smaller."""
    header = ["bundle", "median ms A", "median ms B", "median B/A", "p90 ms A", "p90 ms B", "p90 B/A", "size B/A",
              "note"]
    rows = []
    for r in compare_reports(a, b):
        note = r["match"] if r["match"] != "both" else ", ".join(
            f"{side} {r[f'status_{side.lower()}']}" for side in "AB" if r[f"status_{side.lower()}"] != "ok")
        rows.append([_cell(r["name"]), _fmt(r["median_a"]), _fmt(r["median_b"]), _fmt(r["median_ratio"], 2, "×"),
                     _fmt(r["p90_a"]), _fmt(r["p90_b"]), _fmt(r["p90_ratio"], 2, "×"), _fmt(r["size_ratio"], 2, "×"),
                     _cell(note)])
    lines = ["# edgevit bench comparison", "",
             *(f"- **{side}:** {rep.get('device', '?')}, {_when(rep)}, `{rep.get('command', '')}`"
               for side, rep in (("A", a), ("B", b))), ""]
    if a.get("device") != b.get("device"):
        lines += ["A and B ran on different devices: the ratios compare devices as well as bundles.", ""]
    lines += [*_table(header, rows), "", "Ratios are B/A: below 1 means B is faster (or smaller)."]
    return "\n".join(lines) + "\n"
