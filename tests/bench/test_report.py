import copy
import csv
import json

import pytest

from edgevit.bench.report import (COLUMNS, compare_markdown, compare_reports, load_report, markdown,
                                  write_report)
from edgevit.errors import EdgevitError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _measurement(name, target, precision, status="ok", median=None, samples=(), **fields):
    latency = None if median is None else {"mean": median * 1.02, "median": median, "p90": median * 1.1,
                                           "p99": median * 1.3, "min": median * 0.9, "max": median * 1.5,
                                           "std": median * 0.04, "cv": 0.04}
    return {"name": name, "bundle": f"/tmp/{name}.pte", "variant": "tnt_ti", "target": target,
            "precision": precision, "runtime": target, "status": status, "error": None, "threads": 2,
            "latency_ms": latency, "samples_ms": list(samples), "load_ms": 12.0, "first_inference_ms": 30.0,
            "memory_mb": None, "memory_kind": None, "size_mb": None, "energy_mj": None, "energy_note": None,
            "top1_drop": None, "fraction_of_peak": None, "gmacs": None, "extra": {}, **fields}


@pytest.fixture
def report():
    unstable = _measurement("tnt_ti/onnx-fp32", "onnx", "fp32", "unstable", 8.0, [6.0, 8.0, 8.5, 11.0, 7.5],
                            size_mb=23.94, memory_mb=150.04, memory_kind="peak RSS")
    unstable["latency_ms"]["cv"] = 0.14
    return {
        "schema_version": 1, "created": "2026-11-21T10:00:00+0000", "command": "edgevit bench out/ --iters 5",
        "device": "host",
        "environment": {"cpu": "Test CPU", "cores": 2, "os": "Linux", "runtimes": {"executorch": "1.5.1"},
                        "matmul_peak_gflops": 95.3},
        "settings": {"warmup": 10, "iters": 5, "threads": 2, "interleaved": True},
        "measurements": [
            _measurement("tnt_ti/executorch-fp32", "executorch", "fp32", "ok", 23.456, [23.0, 23.4, 23.5, 24.0],
                         size_mb=23.91, memory_mb=120.54, memory_kind="peak RSS", energy_mj=41.27,
                         energy_note="estimated from battery current at 1 Hz", fraction_of_peak=0.123, gmacs=1.4),
            unstable,
            _measurement("tnt_ti/tflite-int8", "tflite", "int8", "ok", 5.4321, [5.3, 5.4, 5.5], size_mb=6.1,
                         top1_drop=0.42),
            _measurement("tnt_ti/coreml-fp16", "coreml", "fp16", "failed",
                         error="Core ML needs macOS\nTraceback: more detail here"),
        ]}


def test_write_report_files(report, tmp_path):
    paths = write_report(report, tmp_path / "new")
    assert set(paths) == {"json", "csv", "markdown", "latency", "pareto"}
    assert all(p.is_file() for p in paths.values())
    assert json.loads(paths["json"].read_text()) == report
    for key in ("latency", "pareto"):
        assert paths[key].read_bytes()[:8] == PNG_MAGIC
    with paths["csv"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [m["name"] for m in report["measurements"]]
    assert {"median_ms", "p90_ms", "p99_ms", "std_ms", "cv", "size_mb", "top1_drop"} <= set(rows[0])
    assert "samples_ms" not in rows[0]
    assert float(rows[0]["median_ms"]) == 23.456 and rows[0]["samples"] == "4"
    assert rows[3]["median_ms"] == "" and rows[3]["error"].startswith("Core ML needs macOS")


def test_pareto_without_parity_results_still_written(report, tmp_path):
    for m in report["measurements"]:
        m["top1_drop"] = None
    assert write_report(report, tmp_path)["pareto"].read_bytes()[:8] == PNG_MAGIC


def test_markdown_table_and_notes(report):
    text = markdown(report)
    lines = text.splitlines()
    assert lines[0] == "# edgevit bench: host, 2026-11-21 10:00"
    assert "| " + " | ".join(COLUMNS) + " |" in lines
    assert COLUMNS == ["bundle", "target", "precision", "status", "size MB", "median ms", "p90 ms", "FPS",
                       "memory MB", "energy mJ", "top-1 drop"]
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines if line.startswith("| tnt_ti/")}
    # ms: 1 decimal above 10, 2 below; MB: 1 decimal; FPS = 1000 / median
    assert rows["tnt_ti/executorch-fp32"] == ["| tnt_ti/executorch-fp32", "executorch", "fp32", "ok", "23.9",
                                              "23.5", "25.8", "42.6", "120.5", "41.3", "— |"]
    assert rows["tnt_ti/onnx-fp32"][3:8] == ["unstable (CV 14 %)", "23.9", "8.00", "8.80", "125.0"]
    assert rows["tnt_ti/tflite-int8"][-1] == "0.42 |"
    assert rows["tnt_ti/coreml-fp16"][3:7] == ["failed: Core ML needs macOS", "—", "—", "—"]
    assert "Traceback: more detail here" in text  # full error in the notes
    assert "estimated from battery current" in text
    assert "12.3 % of the device's matmul peak (95.3 GFLOP/s)" in text
    assert "10 warm-up runs, then 5 timed runs" in text
    assert "Test CPU, 2 cores, Linux" in text


def test_compare(report):
    b = copy.deepcopy(report)
    b["measurements"][0]["latency_ms"].update(median=11.728, p90=20.0)
    b["measurements"][0]["size_mb"] = 11.955
    b["measurements"] = [m for m in b["measurements"] if m["name"] != "tnt_ti/tflite-int8"]
    b["measurements"].append(_measurement("tnt_ti/pytorch-fp32", "pytorch", "fp32", "ok", 30.0))
    rows = {r["name"]: r for r in compare_reports(report, b)}
    first = rows["tnt_ti/executorch-fp32"]
    assert first["match"] == "both"
    assert first["median_ratio"] == pytest.approx(0.5)
    assert first["p90_ratio"] == pytest.approx(20.0 / (23.456 * 1.1))
    assert first["size_ratio"] == pytest.approx(0.5)
    assert rows["tnt_ti/onnx-fp32"]["median_ratio"] == pytest.approx(1.0)
    assert rows["tnt_ti/coreml-fp16"]["median_ratio"] is None
    assert rows["tnt_ti/tflite-int8"]["match"] == "only in A"
    assert rows["tnt_ti/pytorch-fp32"]["match"] == "only in B"
    text = compare_markdown(report, b)
    assert "| tnt_ti/executorch-fp32 | 23.5 | 11.7 | 0.50× |" in text
    assert "only in A" in text and "only in B" in text


def test_load_report(report, tmp_path):
    write_report(report, tmp_path)
    assert load_report(tmp_path) == report
    assert load_report(tmp_path / "report.json") == report
    (tmp_path / "other.json").write_text(json.dumps({"name": "not a report"}))
    with pytest.raises(EdgevitError, match="not an edgevit bench report"):
        load_report(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(EdgevitError, match="not valid JSON"):
        load_report(tmp_path / "broken.json")
    with pytest.raises(EdgevitError, match="no bench report"):
        load_report(tmp_path / "missing")
