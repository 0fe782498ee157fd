"""The host harness for real: bundles and eager PyTorch in their own worker processes, interleaved."""
import json
import shutil
import sys

import pytest

from edgevit.bench import bench, load_report, write_report
from edgevit.bench import host
from edgevit.bench.stats import summarize
from edgevit.cli import main
from edgevit.errors import EdgevitError


def test_summarize_statistics():
    stats = summarize([1.0, 2.0, 3.0, 4.0, 10.0])
    assert stats["median"] == 3.0 and stats["mean"] == 4.0 and stats["min"] == 1.0 and stats["max"] == 10.0
    assert stats["p90"] == pytest.approx(7.6) and stats["cv"] == pytest.approx(stats["std"] / 4.0)
    assert summarize([]) is None


def test_host_bench_times_every_runtime_and_the_eager_baseline(small_bundles, tmp_path):
    report = bench(list(small_bundles.values()), iters=6, warmup=1, threads=1, chunk=2)
    rows = {m["name"]: m for m in report["measurements"]}
    assert set(rows) == {"t2t_vit_7/executorch-fp32", "t2t_vit_7/tflite-fp32", "t2t_vit_7/onnx-fp32",
                         "t2t_vit_7/pytorch-eager"}
    assert {m["runtime"] for m in rows.values()} == {"executorch", "litert", "onnxruntime", "pytorch-eager"}
    for measurement in rows.values():
        assert measurement["status"] in ("ok", "unstable"), measurement["error"]
        assert len(measurement["samples_ms"]) == 6 and all(s > 0 for s in measurement["samples_ms"])
        latency = measurement["latency_ms"]
        assert latency["min"] <= latency["median"] <= latency["p90"] <= latency["p99"] <= latency["max"]
        assert measurement["load_ms"] > 0 and measurement["first_inference_ms"] > 0
        assert measurement["memory_mb"] > 50 and measurement["memory_kind"] == "peak RSS"
        assert 0 < measurement["fraction_of_peak"] < 1 and measurement["gmacs"] > 0
        assert measurement["threads"] == 1
    manifest = json.loads((small_bundles["onnx"] / "manifest.json").read_text())
    assert rows["t2t_vit_7/onnx-fp32"]["size_mb"] == pytest.approx(manifest["artifact"]["size_bytes"] / 1e6)
    assert report["environment"]["matmul_peak_gflops"] > 1 and report["environment"]["cores"] >= 1
    assert report["environment"]["runtimes"]["onnxruntime"]

    paths = write_report(report, tmp_path / "report")
    assert {p.name for p in paths.values()} >= {"report.json", "report.csv", "report.md", "latency.png"}
    assert load_report(tmp_path / "report")["measurements"][0]["samples_ms"] == report["measurements"][0]["samples_ms"]
    assert "t2t_vit_7/tflite-fp32" in (tmp_path / "report" / "report.md").read_text()


def test_bench_shows_the_parity_drop_when_the_bundle_has_one(small_bundles, tmp_path):
    bundle = tmp_path / "onnx-fp32"
    shutil.copytree(small_bundles["onnx"], bundle)
    (bundle / "parity.json").write_text(json.dumps({"top1_drop": 0.07}))
    report = bench([bundle], iters=2, warmup=0, baseline=False)
    assert [m["top1_drop"] for m in report["measurements"]] == [0.07]


def test_cli_bench_writes_a_report_and_compares_two(small_bundles, tmp_path, capsys):
    for run in ("a", "b"):
        assert main(["bench", str(small_bundles["tflite"]), "--iters", "3", "--warmup", "0", "--no-baseline",
                     "--out", str(tmp_path / run)]) == 0
    table = capsys.readouterr().out
    assert "| bundle | target | precision | status |" in table and "t2t_vit_7/tflite-fp32" in table
    assert load_report(tmp_path / "a")["command"].startswith("edgevit bench ")
    assert main(["bench", "--compare", str(tmp_path / "a" / "report.json"), str(tmp_path / "b")]) == 0
    assert "t2t_vit_7/tflite-fp32" in capsys.readouterr().out


CRASH_AFTER_TWO_RUNS = """
import os, sys
import edgevit.bench.worker as worker
runs = 0
def reply(message):
    print(__import__("json").dumps(message), flush=True)
def requests():
    global runs
    for line in sys.stdin:
        if '"run"' in line:
            runs += 1
            if runs > 2:
                os._exit(3)
        yield line
worker.serve(requests(), reply)
"""


def test_a_runner_that_dies_mid_run_keeps_its_samples_and_says_why(small_bundles):
    """A real worker process that exits during the third timed turn: partial numbers, never made-up ones."""
    launch = (sys.executable, "-c", CRASH_AFTER_TWO_RUNS)
    job = host.Job({"name": "crashing", "extra": {}}, {"bundle": str(small_bundles["onnx"])})
    [measurement] = host.measure([job], launch, warmup=1, iters=10, threads=1, chunk=2)
    assert measurement["status"] == "partial"
    assert len(measurement["samples_ms"]) == 2 and measurement["latency_ms"]["median"] > 0
    assert "exited with code 3" in measurement["error"] and "after 2 of 10 iterations" in measurement["error"]


def test_a_broken_artifact_fails_its_row_and_not_the_others(small_bundles, tmp_path):
    broken = tmp_path / "tflite-fp32"
    shutil.copytree(small_bundles["tflite"], broken)
    (broken / "model.tflite").write_bytes(b"not a flatbuffer")
    report = bench([broken, small_bundles["onnx"]], iters=2, warmup=0, baseline=False)
    failed, fine = report["measurements"]
    assert failed["status"] == "failed" and failed["error"].startswith("load:") and not failed["samples_ms"]
    assert fine["status"] in ("ok", "unstable")


@pytest.mark.parametrize("kwargs, message", [
    ({"device": "ios"}, "iOS benchmarks need macOS"),
    ({"device": "toaster"}, "unknown device"),
    ({"device": "jetson"}, "jetson:USER@HOST"),
    ({"device": "android"}, "android cannot run"),
    ({"iters": 0}, "--iters must be at least 1"),
])
def test_bad_requests_fail_before_any_work(small_bundles, kwargs, message):
    with pytest.raises(EdgevitError, match=message):
        bench([small_bundles["onnx"]], **kwargs)


def test_unknown_items_are_named(tmp_path):
    with pytest.raises(EdgevitError, match="neither a bundle directory nor a model"):
        bench(["tnt_tiniest"])
    with pytest.raises(EdgevitError, match="not an edgevit bundle"):
        bench([tmp_path])
    with pytest.raises(EdgevitError, match="at least one bundle"):
        bench([])


def test_a_model_name_is_converted_once_into_the_cache(tmp_path):
    report = bench(["t2t_vit_7"], img_size=32, targets=["onnx"], cache=tmp_path, iters=2, warmup=0, baseline=False)
    [measurement] = report["measurements"]
    assert measurement["status"] in ("ok", "unstable") and measurement["target"] == "onnx"
    bundle = tmp_path / "img32" / "t2t_vit_7" / "onnx-fp32"
    assert measurement["bundle"] == str(bundle)
    stamp = (bundle / "manifest.json").stat().st_mtime_ns
    bench(["t2t_vit_7"], img_size=32, targets=["onnx"], cache=tmp_path, iters=1, warmup=0, baseline=False)
    assert (bundle / "manifest.json").stat().st_mtime_ns == stamp  # reused, not converted again
