"""Numbers from the text that on-device benchmark tools print; nothing is estimated or filled in.

Formats checked against each tool's source and against logs published from real devices:

- ``trtexec``, TensorRT 8.2 to 10.x (``samples/common/sampleReporting.cpp``, ``samples/trtexec/trtexec.cpp``):
  ``[MM/DD/YYYY-HH:MM:SS] [I]`` lines, the ``=== Performance summary ===`` block (one ``percentile(P%)`` per
  ``--percentile`` value, default 90,95,99 since 8.6), and the ``--exportTimes`` JSON: a list of records with
  ``startEnqMs`` ... ``endD2hMs``, ``h2dMs``, ``computeMs``, ``d2hMs``, ``latencyMs`` (8.2 adds ``endToEndMs``
  and also lists the warm-up queries; later versions list only the timed ones).
- LiteRT / TensorFlow Lite ``benchmark_model``, TensorFlow 2.x and LiteRT (``tools/benchmark/benchmark_model.cc``;
  ``Stat`` and ``StatWithPercentiles::OutputToStream`` in ``stats_calculator.h``): ``count= first= curr= min= max=
  avg= std=`` in microseconds, with `` p5= median= p95=`` appended by LiteRT builds.
- ExecuTorch ``executor_runner``, 0.5 to 1.0 and main (``examples/portable/executor_runner/executor_runner.cpp``,
  ``runtime/platform/default/posix.cpp``): ``I 00:00:00.011864 executorch:executor_runner.cpp:292] message``.
  Main adds ``Model loaded in X ms.`` and one ``Iteration i of N: X ms`` line per execution.
- ``tegrastats``, L4T 32.x (JetPack 4: no timestamp, rails without a unit) to L4T 36.x (JetPack 6: leading
  ``MM-DD-YYYY HH:MM:SS``, rails as ``NAME current mW/average mW``).
"""
from __future__ import annotations

import json
import re

from edgevit.errors import EdgevitError

# The rail tegrastats prints for each board's module input power (Jetson Linux developer guides, power-monitor
# sections, and the INA3221 channels in the L4T device trees):
#   Nano                              POM_5V_IN    (POM_5V_GPU and POM_5V_CPU are branches of it)
#   TX1, TX2, TX2 NX                  VDD_IN
#   Xavier NX, Orin NX, Orin Nano     VDD_IN
#   AGX Xavier                        none: GPU, CPU, SOC, CV, VDDRQ and SYS5V are separate branches of the two
#                                     module supplies (SYS_VIN_HV, SYS_VIN_MV); their sum is the documented total.
#   AGX Orin                          none: VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0 is the documented total
#                                     (VDDQ_VDD2_1V8AO is fed from VIN_SYS_5V0, so adding it counts DRAM twice).
# The AGX boards get None rather than a sum: branch rails leave out regulator losses, so a sum is not the same
# quantity as an input rail and energies from the two would not be comparable across boards.
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"  # C++ streams print e.g. 1.04176e+06


def _nums(pattern: str, text: str) -> tuple[float, ...] | None:
    """The numbers at each ``{x}`` of the first match of ``pattern`` (a regex, per line), or None."""
    match = re.search(pattern.replace("{x}", f"({_NUM})"), text, re.M)
    return tuple(float(group) for group in match.groups()) if match else None


def _num(pattern: str, text: str) -> float | None:
    found = _nums(pattern, text)
    return found[0] if found else None


def _pairs(text: str) -> dict[str, float]:
    """``key = value`` / ``key=value`` pairs: ``min = 1.9 ms, percentile(99%) = 2.1 ms`` or ``count=34 avg=15420.6``."""
    return {key: float(value) for key, value in re.findall(rf"([\w%()]+) ?= ?({_NUM})", text)}


def _require(text: str, marker: str, tool: str) -> None:
    if not text.strip() or not re.search(marker, text, re.M):
        raise EdgevitError(f"this is not {tool} output (empty, or none of the lines {tool} always prints); "
                           f"pass the tool's full stdout and stderr")


def _result(runner: str) -> dict:
    return {"runner": runner, "complete": False, "samples_ms": [], "latency_ms": {}, "iterations": None,
            "init_ms": None, "first_inference_ms": None, "throughput_qps": None, "peak_memory_mb": None,
            "extra": {}, "errors": []}


def _errors(pattern: str, text: str) -> list[str]:
    return [line.strip() for line in re.findall(pattern, text, re.M)]


_TRT_STAT_LINES = {"Latency": None, "End-to-End Host Latency": "e2e_ms", "Enqueue Time": "enqueue_ms",
                   "H2D Latency": "h2d_ms", "GPU Compute Time": "gpu_compute_ms", "D2H Latency": "d2h_ms"}
_LATENCY_KEYS = ("mean", "median", "min", "max", "std")


def parse_trtexec(text: str, times_json: str | None = None) -> dict:
    """A trtexec log, plus optionally the file its ``--exportTimes`` wrote (per-query ``latencyMs``).

    ``init_ms`` adds the engine build, load and deserialization times the log reports; the parts are in ``extra``.
    """
    _require(text, r"TensorRT\.trtexec|\[[IWEV]\] ", "trtexec")
    result, extra = _result("trtexec"), {}
    labels = "|".join(map(re.escape, _TRT_STAT_LINES))
    for label, values in re.findall(rf"\] ({labels}): (min = .*)$", text, re.M):
        stats = {}
        for key, value in _pairs(values).items():
            percentile = re.fullmatch(r"percentile\(([\d.]+)%\)", key)
            stats[f"p{float(percentile[1]):g}" if percentile else key] = value
        if _TRT_STAT_LINES[label]:
            extra[_TRT_STAT_LINES[label]] = stats
        else:
            result["latency_ms"] = stats
    phases = {"engine_build_ms": r"Engine built in {x} sec", "engine_load_ms": r"Engine loaded in {x} sec",
              "engine_deserialize_ms": r"Engine deserialized in {x} sec"}
    for key, pattern in phases.items():
        seconds = _num(pattern, text)
        if seconds is not None:
            extra[key] = seconds * 1000
    if any(key in extra for key in phases):
        result["init_ms"] = sum(extra[key] for key in phases if key in extra)
    queries = _num(r"Timing trace has {x} queries", text)
    result["iterations"] = None if queries is None else int(queries)
    warmup = _num(r"Warmup completed {x} queries", text)
    if warmup is not None:
        extra["warmup_queries"] = int(warmup)
    result["throughput_qps"] = _num(r"\] Throughput: {x} qps", text)
    for key, pattern in (("total_host_walltime_s", r"Total Host Walltime: {x} s"),
                         ("total_gpu_compute_s", r"Total GPU Compute Time: {x} s")):
        value = _num(pattern, text)
        if value is not None:
            extra[key] = value
    version = re.search(r"\] TensorRT version: (\S+)", text)
    if version:
        extra["tensorrt_version"] = version[1]
    if times_json is not None:
        result["samples_ms"] = _trtexec_times(times_json)
    result.update(complete=bool(result["latency_ms"]), extra=extra, errors=_errors(r"^.*\[E\] .*$", text))
    return result


def _trtexec_times(times_json: str) -> list[float]:
    try:
        records = json.loads(times_json)
    except json.JSONDecodeError as error:
        raise EdgevitError(f"the trtexec --exportTimes file is not JSON ({error}); pass the file's text") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and "latencyMs" in r for r in records):
        raise EdgevitError("the trtexec --exportTimes file should be a list of per-query records with 'latencyMs'")
    return [float(record["latencyMs"]) for record in records]


def parse_benchmark_model(text: str) -> dict:
    """LiteRT / TensorFlow Lite benchmark_model output; its microseconds are reported here in milliseconds."""
    _require(text, r"^(?:\w+: )?(?:STARTING!|Loaded model|Initialized session in|Running benchmark for)",
             "benchmark_model")
    result, extra = _result("benchmark_model"), {}
    # Only the two Run() summaries start a line with count=; the op profiler's "Timings (microseconds): count="
    # tables, when enabled, do not.
    stats = [_tflite_stat(line) for line in re.findall(r"^(?:\w+: )?(count=\d+.*)$", text, re.M)]
    warmup = stats[0] if stats else None  # the warm-up Run() always comes first
    timed = stats[-1] if len(stats) > 1 else None
    if timed:
        names = {"avg": "mean", "median": "median", "min": "min", "max": "max", "std": "std", "p95": "p95"}
        result["latency_ms"] = {name: timed[key] / 1000 for key, name in names.items() if key in timed}
        result["iterations"] = int(timed["count"])
        if "p5" in timed:
            extra["latency_p5_ms"] = timed["p5"] / 1000
    result["init_ms"] = _num(r"Initialized session in {x} ?ms", text)
    first = _num(r"First inference: {x}", text)
    if first is None and warmup and "first" in warmup:
        first = warmup["first"]
    result["first_inference_ms"] = None if first is None else first / 1000
    if warmup and "avg" in warmup:
        extra["warmup_avg_ms"], extra["warmup_runs"] = warmup["avg"] / 1000, int(warmup["count"])
    memory = _nums(r"Memory footprint delta from the start of the tool \(MB\): init={x} overall={x}", text)
    if memory:
        extra["memory_init_mb"], extra["memory_overall_mb"] = memory
    result["peak_memory_mb"] = _num(r"Overall peak memory footprint \(MB\) via periodic monitoring: {x}", text)
    threads = _num(r"#threads used for CPU inference: \[{x}\]", text) or _num(r"Num threads: \[{x}\]", text)
    if threads is not None:
        extra["num_threads"] = int(threads)
    model_mb = _num(r"The input model file size \(MB\): {x}", text)
    if model_mb is not None:
        extra["model_size_mb"] = model_mb
    result.update(complete="Inference timings in us:" in text, extra=extra, errors=_errors(r"^ERROR: .*$", text))
    return result


def _tflite_stat(line: str) -> dict[str, float]:
    stat = _pairs(line)
    if "avg" not in stat and "curr" in stat:
        # Stat prints just count and curr ("(all same)") when every run took the same time.
        stat.update(first=stat["curr"], min=stat["curr"], max=stat["curr"], avg=stat["curr"], std=0.0)
    return stat


def parse_executor_runner(text: str) -> dict:
    """ExecuTorch executor_runner output. It prints only the total for all executions, so the mean is total / N."""
    _require(text, r"^[DIEF] (?:[\d:.]+ )?executorch:", "executor_runner")
    result, extra = _result("executor_runner"), {}
    done = _nums(r"Model executed successfully {x} time\(s\) in {x} ms", text)
    if done:
        count, total = int(done[0]), done[1]
        result.update(complete=True, iterations=count)
        extra["total_ms"] = total
        if count:
            result["latency_ms"] = {"mean": total / count}
    iterations = re.findall(rf"Iteration (\d+) of \d+: ({_NUM}) ms", text)
    result["samples_ms"] = [float(ms) for _, ms in iterations]
    result["first_inference_ms"] = next((float(ms) for i, ms in iterations if i == "1"), None)
    result["init_ms"] = _num(r"Model loaded in {x} ms", text)
    threads = _num(r"Resetting threadpool with num threads = {x}", text)
    if threads is not None:
        extra["num_threads"] = int(threads)
    buffers = re.findall(r"Setting up (?:CPU )?planned buffer \d+, size (\d+)\.", text)
    if buffers:
        extra["planned_buffer_bytes"] = sum(map(int, buffers))
    result.update(extra=extra, errors=_errors(r"^[EF] (?:[\d:.]+ )?executorch:.*$", text))
    return result


# NAME current/average, with or without mW; "RAM 2871/7620MB" is not a rail because MB follows the digits.
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (-?\d+)(?:mW)?/(-?\d+)(?:mW)?\b")
_MB_PER = {"k": 1 / 1024, "M": 1.0, "G": 1024.0}


def parse_tegrastats(text: str) -> list[dict]:
    """One dict per tegrastats line; lines that are not tegrastats output (a shell prompt, say) are skipped."""
    samples = []
    for line in text.splitlines():
        rails = {name: {"current_mw": float(current), "average_mw": float(average)}
                 for name, current, average in _RAIL.findall(line)}
        ram = re.search(r"\bRAM (\d+)/\d+([kMG])B", line)
        gpu = re.search(r"\bGR3D_FREQ (\d+)%", line)
        if not (rails or ram or gpu):
            continue
        stamp = re.match(r"(\d\d-\d\d-\d{4} \d\d:\d\d:\d\d) ", line)
        samples.append({"rails": rails, "ram_used_mb": float(ram[1]) * _MB_PER[ram[2]] if ram else None,
                        "gr3d_freq_pct": float(gpu[1]) if gpu else None, "timestamp": stamp[1] if stamp else None})
    if not samples:
        raise EdgevitError("no tegrastats lines found (each has RAM, GR3D_FREQ or power rails); "
                           "pass what `tegrastats --interval MS` printed")
    return samples


def input_rail(rail_names) -> str | None:
    """The board's input-power rail among ``rail_names``, or None where the board has none (see INPUT_RAILS)."""
    names = set(rail_names)
    return next((rail for rail in INPUT_RAILS if rail in names), None)


def energy_per_inference_mj(samples: list[dict], inferences: int, seconds: float) -> tuple[float | None, str]:
    """Mean input-rail power over ``samples`` × ``seconds`` / ``inferences``, in mJ (mW × s = mJ), and a note."""
    if not samples:
        return None, "no tegrastats samples"
    if inferences <= 0 or seconds <= 0:
        raise EdgevitError(f"energy per inference needs a positive inference count and duration, "
                           f"got {inferences} inferences in {seconds} s")
    seen = list(dict.fromkeys(name for sample in samples for name in sample["rails"]))
    rail = input_rail(seen)
    if rail is None:
        return None, f"unknown input rail; rails seen: {', '.join(seen) or 'none'}"
    # Instantaneous readings, not tegrastats' own average: that one runs from when tegrastats started, so it
    # mixes in whatever the board did before the benchmark window.
    readings = [sample["rails"][rail]["current_mw"] for sample in samples if rail in sample["rails"]]
    mean_mw = sum(readings) / len(readings)
    return mean_mw * seconds / inferences, f"{rail}: mean {mean_mw:.1f} mW over {len(readings)} samples"
