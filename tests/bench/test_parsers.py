"""The benchmark-output parsers read the numbers each tool really prints (samples in tests/data/bench)."""
from pathlib import Path

import pytest

from edgevit.bench.parsers import (energy_per_inference_mj, input_rail, parse_benchmark_model,
                                   parse_executor_runner, parse_tegrastats, parse_trtexec)
from edgevit.errors import EdgevitError

DATA = Path(__file__).parent.parent / "data" / "bench"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_trtexec_full_log():
    r = parse_trtexec(read("trtexec_orin_fp16.txt"))
    assert r["runner"] == "trtexec" and r["complete"] and r["errors"] == [] and r["samples_ms"] == []
    assert r["latency_ms"] == pytest.approx({"min": 1.89526, "max": 2.11041, "mean": 1.98749, "median": 1.98865,
                                             "p90": 2.02693, "p95": 2.04004, "p99": 2.11041})
    assert r["throughput_qps"] == pytest.approx(503.148)
    assert r["iterations"] == 50
    assert r["init_ms"] == pytest.approx(187412.0 + 21.3406)  # engine build + deserialization
    assert r["first_inference_ms"] is None and r["peak_memory_mb"] is None
    extra = r["extra"]
    assert extra["gpu_compute_ms"] == pytest.approx({"min": 1.79218, "max": 2.00407, "mean": 1.88381,
                                                     "median": 1.88528, "p90": 1.92183, "p95": 1.9343,
                                                     "p99": 2.00407})
    assert extra["h2d_ms"]["mean"] == pytest.approx(0.091687)
    assert extra["d2h_ms"]["p99"] == pytest.approx(0.0133057)
    assert extra["enqueue_ms"]["median"] == pytest.approx(0.359283)
    assert extra["total_host_walltime_s"] == pytest.approx(0.0993743)
    assert extra["total_gpu_compute_s"] == pytest.approx(0.0941907)
    assert extra["engine_build_ms"] == pytest.approx(187412.0)
    assert extra["engine_deserialize_ms"] == pytest.approx(21.3406)
    assert extra["warmup_queries"] == 97 and extra["tensorrt_version"] == "10.3.0"


def test_trtexec_export_times_are_the_per_query_latencies():
    r = parse_trtexec(read("trtexec_orin_fp16.txt"), read("trtexec_times.json"))
    samples = r["samples_ms"]
    assert len(samples) == r["iterations"] == 50
    assert samples[:2] == pytest.approx([1.97186, 2.01073])
    # The summary was computed from the same queries (the JSON rounds each to 6 digits).
    assert sum(samples) / len(samples) == pytest.approx(r["latency_ms"]["mean"], rel=1e-4)
    assert max(samples) == pytest.approx(r["latency_ms"]["max"])
    assert sorted(samples)[44] == pytest.approx(r["latency_ms"]["p90"])  # TensorRT's percentile index for 50


def test_trtexec_log_cut_before_the_summary_keeps_what_was_printed():
    text = read("trtexec_orin_fp16.txt").split("=== Performance summary ===")[0]
    r = parse_trtexec(text)
    assert not r["complete"]
    assert r["latency_ms"] == {} and r["throughput_qps"] is None and "gpu_compute_ms" not in r["extra"]
    assert r["iterations"] == 50 and r["init_ms"] == pytest.approx(187433.3406)


def test_trtexec_run_that_failed_mid_inference():
    r = parse_trtexec(read("trtexec_nano_failed_mid_run.txt"))
    assert not r["complete"]
    assert r["latency_ms"] == {} and r["iterations"] is None and r["throughput_qps"] is None
    assert r["init_ms"] == pytest.approx(4719.03)  # TensorRT 8.2's "Engine loaded" includes deserialization
    assert r["extra"] == {"engine_load_ms": pytest.approx(4719.03), "tensorrt_version": "8.2.1"}
    assert len(r["errors"]) == 3
    assert "Cuda Runtime (the launch timed out and was terminated)" in r["errors"][1]
    assert r["errors"][2].endswith("[E] Error occurred during inference")


def test_trtexec_rejects_bad_export_times():
    log = read("trtexec_orin_fp16.txt")
    with pytest.raises(EdgevitError, match="not JSON"):
        parse_trtexec(log, "[{")
    with pytest.raises(EdgevitError, match="latencyMs"):
        parse_trtexec(log, '[{"computeMs": 1.0}]')


def test_benchmark_model_full_run():
    r = parse_benchmark_model(read("benchmark_model_pixel.txt"))
    assert r["runner"] == "benchmark_model" and r["complete"] and r["errors"] == [] and r["samples_ms"] == []
    # The last count= line is the timed run; microseconds become milliseconds.
    assert r["latency_ms"] == pytest.approx({"mean": 14.8035, "median": 14.652, "min": 14.295, "max": 17.342,
                                             "std": 0.512, "p95": 15.911})
    assert r["iterations"] == 100
    assert r["init_ms"] == pytest.approx(143.127)
    assert r["first_inference_ms"] == pytest.approx(31.502)
    assert r["peak_memory_mb"] == pytest.approx(52.8516)
    assert r["throughput_qps"] is None
    assert r["extra"] == pytest.approx({"latency_p5_ms": 14.341, "warmup_avg_ms": 15.4206, "warmup_runs": 34,
                                        "memory_init_mb": 39.6992, "memory_overall_mb": 47.1602,
                                        "num_threads": 4, "model_size_mb": 22.9061})


def test_benchmark_model_cut_off_after_warmup():
    r = parse_benchmark_model(read("benchmark_model_pixel_cutoff.txt"))
    assert not r["complete"]
    assert r["latency_ms"] == {} and r["iterations"] is None  # the only count= line is the warm-up
    assert r["init_ms"] == pytest.approx(61.942)
    assert r["first_inference_ms"] == pytest.approx(18.95)  # the warm-up's first run
    assert r["extra"]["warmup_avg_ms"] == pytest.approx(12.2104) and r["extra"]["warmup_runs"] == 41
    assert r["peak_memory_mb"] is None and r["errors"] == []


def test_benchmark_model_all_same_runs_and_errors():
    text = ("INFO: STARTING!\n"
            "INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding "
            "150 seconds.\nINFO: count=1 curr=1041765\n\n"
            "INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding "
            "150 seconds.\nINFO: count=3 curr=971535(all same)\n\n"
            "ERROR: Benchmarking failed.\n")
    r = parse_benchmark_model(text)
    assert r["first_inference_ms"] == pytest.approx(1041.765)
    assert r["latency_ms"] == pytest.approx({"mean": 971.535, "min": 971.535, "max": 971.535, "std": 0.0})
    assert r["errors"] == ["ERROR: Benchmarking failed."] and not r["complete"]


def test_executor_runner_success():
    r = parse_executor_runner(read("executor_runner.txt"))
    assert r["runner"] == "executor_runner" and r["complete"] and r["errors"] == []
    assert r["iterations"] == 50
    assert r["latency_ms"] == {"mean": pytest.approx(1031.215832 / 50)}
    assert r["samples_ms"] == [] and r["init_ms"] is None and r["first_inference_ms"] is None
    assert r["extra"] == {"total_ms": pytest.approx(1031.215832), "num_threads": 4,
                          "planned_buffer_bytes": 4816896}


def test_executor_runner_per_iteration_lines():
    r = parse_executor_runner(read("executor_runner_iterations.txt"))
    assert r["complete"] and r["iterations"] == 5
    assert r["samples_ms"] == pytest.approx([30.102553, 20.711984, 20.583107, 20.649218, 20.598476])
    assert r["first_inference_ms"] == pytest.approx(30.102553)
    assert r["init_ms"] == pytest.approx(56.734207)
    assert r["latency_ms"] == {"mean": pytest.approx(112.645338 / 5)}
    assert sum(r["samples_ms"]) == pytest.approx(r["extra"]["total_ms"])


def test_executor_runner_crash():
    r = parse_executor_runner(read("executor_runner_crash.txt"))
    assert not r["complete"]
    assert r["latency_ms"] == {} and r["iterations"] is None
    assert r["extra"] == {"num_threads": 4, "planned_buffer_bytes": 9437184}
    assert [e.split(" ")[0] for e in r["errors"]] == ["E", "E", "F"]
    assert "Propagating input shapes failed" in r["errors"][0]
    assert r["errors"][2].endswith("Execution of method forward failed with status 0x1")


@pytest.mark.parametrize("name,lines,rail,stamp,first_rails", [
    ("tegrastats_orin_nano.txt", 7, "VDD_IN", "12-02-2025 14:40:01",
     {"VDD_IN": 4969, "VDD_CPU_GPU_CV": 595, "VDD_SOC": 1425}),
    ("tegrastats_xavier_nx.txt", 5, "VDD_IN", "03-14-2024 10:21:07",
     {"VDD_IN": 4965, "VDD_CPU_GPU_CV": 1028, "VDD_SOC": 1418}),
    ("tegrastats_nano.txt", 6, "POM_5V_IN", None, {"POM_5V_IN": 3912, "POM_5V_GPU": 83, "POM_5V_CPU": 652}),
    ("tegrastats_tx2.txt", 5, "VDD_IN", None,
     {"VDD_SYS_GPU": 152, "VDD_SYS_SOC": 611, "VDD_4V0_WIFI": 0, "VDD_IN": 2072, "VDD_SYS_CPU": 152,
      "VDD_SYS_DDR": 340}),
    ("tegrastats_xavier_agx.txt", 5, None, None,
     {"GPU": 155, "CPU": 466, "SOC": 1242, "CV": 0, "VDDRQ": 311, "SYS5V": 2760}),
    ("tegrastats_agx_orin.txt", 6, None, "10-16-2023 11:02:14",
     {"VDD_GPU_SOC": 4788, "VDD_CPU_CV": 798, "VIN_SYS_5V0": 3842, "NC": 0, "VDDQ_VDD2_1V8AO": 707}),
])
def test_tegrastats_boards(name, lines, rail, stamp, first_rails):
    samples = parse_tegrastats(read(name))
    assert len(samples) == lines
    first = samples[0]
    # The first line's average equals its reading: tegrastats had only that one sample.
    assert first["rails"] == {k: {"current_mw": float(v), "average_mw": float(v)} for k, v in first_rails.items()}
    assert first["timestamp"] == stamp and first["gr3d_freq_pct"] == 0.0
    assert all(s["gr3d_freq_pct"] >= 95 for s in samples[1:])  # a benchmark ran from the second line on
    assert input_rail(first["rails"]) == rail


def test_tegrastats_values_of_a_loaded_line():
    second = parse_tegrastats(read("tegrastats_orin_nano.txt"))[1]
    assert second == {"rails": {"VDD_IN": {"current_mw": 9850.0, "average_mw": 7409.0},
                                "VDD_CPU_GPU_CV": {"current_mw": 4213.0, "average_mw": 2404.0},
                                "VDD_SOC": {"current_mw": 2291.0, "average_mw": 1858.0}},
                      "ram_used_mb": 2871.0, "gr3d_freq_pct": 99.0, "timestamp": "12-02-2025 14:40:02"}
    assert parse_tegrastats(read("tegrastats_nano.txt"))[1]["ram_used_mb"] == 2138.0  # not IRAM's kB


def test_tegrastats_negative_rail_and_stray_lines():
    # An AGX Orin line as published (L4T 36): the INA3221 can read slightly negative near zero load.
    line = ("03-17-2024 18:54:10 RAM 10239/62841MB (lfb 442x4MB) SWAP 1/31421MB (cached 0MB) CPU [0%@1728,off] "
            "GR3D_FREQ 0% cpu@37.5C tj@37.5C VDD_GPU_SOC 1592mW/1592mW VDD_CPU_CV -398mW/-398mW "
            "VIN_SYS_5V0 2624mW/2624mW VDDQ_VDD2_1V8AO 403mW/403mW")
    samples = parse_tegrastats(f"$ sudo tegrastats --interval 1000\n{line}\n^C\n")
    assert len(samples) == 1
    assert samples[0]["rails"]["VDD_CPU_CV"] == {"current_mw": -398.0, "average_mw": -398.0}
    assert samples[0]["ram_used_mb"] == 10239.0 and samples[0]["gr3d_freq_pct"] == 0.0


def test_energy_per_inference_from_the_input_rail():
    orin = parse_tegrastats(read("tegrastats_orin_nano.txt"))[1:]  # the lines taken while trtexec ran
    energy, note = energy_per_inference_mj(orin, inferences=500, seconds=6.0)
    assert energy == pytest.approx(10000.0 * 6.0 / 500)  # mean VDD_IN 10 W for 6 s over 500 inferences
    assert note == "VDD_IN: mean 10000.0 mW over 6 samples"
    nano = parse_tegrastats(read("tegrastats_nano.txt"))[1:]
    energy, note = energy_per_inference_mj(nano, inferences=100, seconds=5.0)
    assert energy == pytest.approx(6966.4 * 5.0 / 100)
    assert note.startswith("POM_5V_IN:")


def test_energy_without_an_input_rail_or_samples():
    samples = parse_tegrastats(read("tegrastats_agx_orin.txt"))
    assert energy_per_inference_mj(samples, 100, 1.0) == (
        None, "unknown input rail; rails seen: VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0, NC, VDDQ_VDD2_1V8AO")
    samples = parse_tegrastats(read("tegrastats_xavier_agx.txt"))
    assert energy_per_inference_mj(samples, 100, 1.0) == (
        None, "unknown input rail; rails seen: GPU, CPU, SOC, CV, VDDRQ, SYS5V")
    assert energy_per_inference_mj([], 100, 1.0) == (None, "no tegrastats samples")
    with pytest.raises(EdgevitError, match="positive"):
        energy_per_inference_mj(parse_tegrastats(read("tegrastats_nano.txt")), 0, 1.0)


def test_input_rail():
    assert input_rail(["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]) == "VDD_IN"
    assert input_rail({"POM_5V_GPU": {}, "POM_5V_IN": {}}) == "POM_5V_IN"
    assert input_rail([]) is None


@pytest.mark.parametrize("parse", [parse_trtexec, parse_benchmark_model, parse_executor_runner, parse_tegrastats])
def test_empty_input_raises(parse):
    with pytest.raises(EdgevitError):
        parse("")


@pytest.mark.parametrize("parse,other", [(parse_trtexec, "benchmark_model_pixel.txt"),
                                         (parse_benchmark_model, "executor_runner.txt"),
                                         (parse_executor_runner, "trtexec_orin_fp16.txt"),
                                         (parse_tegrastats, "benchmark_model_pixel.txt")])
def test_another_tools_output_raises(parse, other):
    with pytest.raises(EdgevitError, match="trtexec|benchmark_model|executor_runner|tegrastats"):
        parse(read(other))
