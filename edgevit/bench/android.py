"""Android phones over adb: push the bundle and a runner built for the phone, time it there, read PSS.

Runners (build instructions in docs/bench.md): TFLite's `benchmark_model` for .tflite bundles, ExecuTorch's
`executor_runner` (built with XNNPACK) for .pte bundles. Pass them with --runner PATH (repeatable); a runner
is matched to its target by its file name.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

from ..errors import EdgevitError
from .parsers import parse_benchmark_model, parse_executor_runner
from .measurement import apply_runner_output, parse_output

DEVICE_ROOT = "/data/local/tmp/edgevit"
RUNNERS = {"tflite": "benchmark_model", "executorch": "executor_runner"}
PSS_POLL_S = 0.2
_EXIT = re.compile(r"^EDGEVIT_EXIT (\d+)$", re.M)
_PSS = re.compile(r"^EDGEVIT_PSS_KB (\d+)$", re.M)


def adb_binary() -> str:
    adb = shutil.which("adb")
    if adb is None:
        raise EdgevitError("`adb` is not installed; install it (apt-get install adb, or Android's platform-tools) "
                           "and connect a phone with USB debugging on.")
    return adb


def adb(serial: str | None, *args: str) -> list[str]:
    return [adb_binary(), *(["-s", serial] if serial else []), *args]


def _adb_run(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EdgevitError(f"`{' '.join(argv)}` did not finish within {timeout:.0f} s; is the phone responsive?")


def connected_devices() -> list[str]:
    result = _adb_run(adb(None, "devices"), timeout=60)
    if result.returncode != 0:
        raise EdgevitError(f"`adb devices` failed: {result.stderr.strip()}")
    rows = [line.split() for line in result.stdout.splitlines()[1:] if line.strip()]
    unauthorized = [row[0] for row in rows if len(row) > 1 and row[1] == "unauthorized"]
    if unauthorized and not any(row[1] == "device" for row in rows if len(row) > 1):
        raise EdgevitError(f"the phone {unauthorized[0]} has not authorised this computer; unlock it and accept "
                           "the USB debugging prompt, then run `adb devices` again.")
    return [row[0] for row in rows if len(row) > 1 and row[1] == "device"]


def choose_device(serial: str | None) -> str:
    devices = connected_devices()
    if not devices:
        raise EdgevitError("no Android device is connected (`adb devices` lists none). Connect a phone with USB "
                           "debugging enabled (Settings > Developer options), accept the prompt on the phone, "
                           "and check that `adb devices` shows it.")
    if serial is None:
        if len(devices) > 1:
            raise EdgevitError(f"several Android devices are connected ({', '.join(devices)}); choose one with "
                               "--device android:SERIAL.")
        return devices[0]
    if serial not in devices:
        raise EdgevitError(f"Android device {serial} is not connected; connected: {', '.join(devices)}.")
    return serial


def match_runners(paths, targets) -> dict[str, Path]:
    """Each target's runner, matched by file name (…benchmark_model…, …executor_runner… as in xnn_executor_runner)."""
    runners = {}
    for path in map(Path, paths or ()):
        if not path.is_file():
            raise EdgevitError(f"runner {path} does not exist.")
        target = next((target for target, name in RUNNERS.items() if name in path.name), None)
        if target is None and len(set(targets)) == 1:
            target = next(iter(targets))
        if target is None:
            raise EdgevitError(f"cannot tell which target runner {path.name} is for; its name should contain "
                               "benchmark_model (TFLite) or executor_runner (ExecuTorch).")
        runners[target] = path
    missing = sorted(set(targets) - set(runners))
    if missing:
        raise EdgevitError("no runner for " + ", ".join(f"{target} (pass --runner PATH/TO/{RUNNERS[target]})"
                                                         for target in missing)
                           + "; docs/bench.md says how to build or download them for arm64 Android.")
    return runners


def runner_command(target: str, runner: str, artifact: str, iters: int, warmup: int, threads: int | None) -> str:
    """The runner's own command line on the phone, with the harness's warm-up, iterations and threads."""
    threads = threads or 4
    if target == "tflite":
        return (f"{runner} --graph={artifact} --num_threads={threads} --use_xnnpack=true "
                f"--warmup_runs={warmup} --warmup_min_secs=0 --num_runs={iters} --min_secs=0 --max_secs=3600 "
                "--report_peak_memory_footprint=true")
    warm = f"{runner} --model_path={artifact} --num_executions={warmup} --cpu_threads={threads} >/dev/null 2>&1; " \
        if warmup else ""  # executor_runner has no warm-up flag: a separate run warms caches and clocks
    return f"{warm}{runner} --model_path={artifact} --num_executions={iters} --cpu_threads={threads}"


def pss_wrapped(command: str) -> str:
    """Run in the background and sample the runner's PSS with dumpsys meminfo until it exits."""
    return (f"sh -c {shlex.quote(command)} & pid=$!; peak=0; "
            f"while kill -0 $pid 2>/dev/null; do "
            f"kb=$(dumpsys meminfo $pid 2>/dev/null | grep -m1 'TOTAL' | tr -s ' ' | cut -d' ' -f2 | tr -cd 0-9); "
            f"[ -n \"$kb\" ] && [ \"$kb\" -gt \"$peak\" ] && peak=$kb; sleep {PSS_POLL_S}; done; "
            "wait $pid; echo EDGEVIT_EXIT $?; echo EDGEVIT_PSS_KB $peak")


def measure_one(serial: str, bundle, runner: Path, iters: int, warmup: int, threads: int | None,
                measurement: dict, log) -> dict:
    target = bundle.target
    directory = f"{DEVICE_ROOT}/{bundle.manifest['model']['variant']}-{bundle.path.name}"
    device_runner = f"{DEVICE_ROOT}/{runner.name}"
    for argv in (adb(serial, "shell", f"mkdir -p {directory}"),
                 adb(serial, "push", str(bundle.artifact), f"{directory}/"),
                 adb(serial, "push", str(runner), device_runner),
                 adb(serial, "shell", f"chmod 755 {device_runner}")):
        result = _adb_run(argv)
        if result.returncode != 0:
            raise EdgevitError(f"`{' '.join(argv[1:])}` failed: {(result.stderr or result.stdout).strip()}")
    command = runner_command(target, device_runner, f"{directory}/{bundle.artifact.name}", iters, warmup, threads)
    log(f"{measurement['name']}: running {runner.name} on {serial}")
    output = _adb_run(adb(serial, "shell", pss_wrapped(command)), timeout=3600).stdout
    parsed = parse_output(parse_benchmark_model if target == "tflite" else parse_executor_runner,
                          output, RUNNERS[target])
    exit_code = int(_EXIT.search(output)[1]) if _EXIT.search(output) else None
    pss_kb = int(_PSS.search(output)[1]) if _PSS.search(output) else 0
    measurement.update(runtime=RUNNERS[target],
                       memory_mb=pss_kb / 1024 if pss_kb else parsed.get("peak_memory_mb"),
                       memory_kind="PSS" if pss_kb else ("peak footprint" if parsed.get("peak_memory_mb") else None))
    apply_runner_output(measurement, parsed, exit_code, runner.name)
    return measurement


def device_environment(serial: str) -> dict:
    def prop(name: str) -> str | None:
        value = _adb_run(adb(serial, "shell", f"getprop {name}"), timeout=30).stdout.strip()
        return value or None
    cores = _adb_run(adb(serial, "shell", "nproc"), timeout=30).stdout.strip()
    return {"cpu": prop("ro.soc.model") or prop("ro.board.platform"), "device": prop("ro.product.model"),
            "os": f"Android {prop('ro.build.version.release')}", "abi": prop("ro.product.cpu.abi"),
            "cores": int(cores) if cores.isdigit() else None, "serial": serial}


def measure(bundles, serial: str | None, runner_paths, warmup: int, iters: int, threads: int | None, skeleton,
            log) -> tuple[list[dict], dict]:
    runners = match_runners(runner_paths, [bundle.target for bundle in bundles])
    serial = choose_device(serial)
    environment = device_environment(serial)
    return [measure_one(serial, bundle, runners[bundle.target], iters, warmup, threads,
                        skeleton(bundle, RUNNERS[bundle.target]), log) for bundle in bundles], environment
