"""Jetson boards over ssh: TensorRT engines timed with `trtexec`, energy from `tegrastats`.

`--runner edgevit[:PYTHON]` runs edgevit's own host runner on the board instead (ONNX Runtime; needs edgevit
installed there): the same worker protocol as on the host, over ssh.
"""
from __future__ import annotations

import shlex
from ..errors import EdgevitError
from . import host
from .parsers import energy_per_inference_mj, parse_tegrastats, parse_trtexec
from .ssh import SshTarget
from .measurement import apply_runner_output, parse_output

REMOTE_ROOT = "edgevit-bench"  # under the board user's home
TRTEXEC_PATHS = ("trtexec", "/usr/src/tensorrt/bin/trtexec")
TEGRASTATS_INTERVAL_MS = 100
TRTEXEC_WARMUP_MS = 1000  # trtexec warms up by time, not by iteration count
ENVIRONMENT_SCRIPT = ("echo cpu=$(grep -m1 -E 'model name|Hardware' /proc/cpuinfo | cut -d: -f2); "
                      "echo cores=$(nproc); echo os=$(uname -sr); "
                      "echo board=$(tr -d '\\0' < /proc/device-tree/model 2>/dev/null); "
                      "echo l4t=$(head -1 /etc/nv_tegra_release 2>/dev/null); "
                      "echo power_mode=$(nvpmodel -q 2>/dev/null | head -1); "
                      "echo tensorrt=$(dpkg-query -W -f='${Version}' tensorrt 2>/dev/null); "
                      # current clocks (Hz): GPU/EMC/DLA devfreq nodes on Jetson, CPU 0's governor frequency
                      "for f in /sys/class/devfreq/*; do [ -r $f/cur_freq ] && "
                      "echo clock_$(basename $f)=$(cat $f/cur_freq); done 2>/dev/null; "
                      "echo clock_cpu0=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq 2>/dev/null)")


def board_environment(board: SshTarget) -> dict:
    result = board.run(ENVIRONMENT_SCRIPT, check=False)
    facts = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    environment = {key: value.strip() or None for key, value in facts.items()}
    environment["cores"] = int(environment["cores"]) if (environment.get("cores") or "").isdigit() else None
    return environment


def copy_bundle(board: SshTarget, bundle, root: str = REMOTE_ROOT) -> str:
    """The bundle on the board, as ROOT/VARIANT-TARGET-PRECISION; returns that path."""
    directory = f"{root}/{bundle.manifest['model']['variant']}-{bundle.path.name}"
    staged = f"{root}/{bundle.path.name}"
    board.run(f"rm -rf {shlex.quote(directory)} {shlex.quote(staged)}")
    board.copy_to(bundle.path, root)
    board.run(f"mv {shlex.quote(staged)} {shlex.quote(directory)}")
    return directory


def find_trtexec(board: SshTarget, runner: str | None) -> str:
    candidates = (runner,) if runner else TRTEXEC_PATHS
    for candidate in candidates:
        if board.run(f"command -v {shlex.quote(candidate)}", check=False).returncode == 0:
            return candidate
    raise EdgevitError(f"trtexec was not found on {board} (looked for {', '.join(candidates)}). It ships with "
                       "JetPack in /usr/src/tensorrt/bin; pass its path with --runner PATH.")


def trtexec_flags(bundle) -> list[str]:
    precision = bundle.manifest.get("precision", "fp32")
    # fp16 lets TensorRT pick half kernels for a float model; a QDQ int8 model needs --int8 to honour its scales
    return {"int8": ["--int8", "--fp16"], "fp32": ["--fp16"], "fp16": ["--fp16"]}.get(precision, ["--fp16"])


def measure_trtexec(board: SshTarget, bundle, trtexec: str, iters: int, warmup: int, measurement: dict,
                    log, root: str = REMOTE_ROOT) -> dict:
    directory = copy_bundle(board, bundle, root)
    model, engine = f"{directory}/{bundle.artifact.name}", f"{directory}/model.engine"
    times, stats = f"{directory}/times.json", f"{directory}/tegrastats.txt"
    flags = " ".join(trtexec_flags(bundle))
    log(f"{measurement['name']}: building the TensorRT engine on {board} ({flags})")
    build = board.run(f"{trtexec} --onnx={model} --saveEngine={engine} {flags} --iterations=1 --duration=0 "
                      "--warmUp=0 2>&1", timeout=3600, check=False)
    built = parse_output(parse_trtexec, build.stdout, "trtexec")
    if build.returncode != 0:
        return apply_runner_output(measurement, built, build.returncode, "trtexec (engine build)")
    timed = (f"(tegrastats --interval {TEGRASTATS_INTERVAL_MS} > {stats} 2>&1 &) ; "
             f"{trtexec} --loadEngine={engine} {flags} --warmUp={TRTEXEC_WARMUP_MS if warmup else 0} "
             f"--iterations={iters} --duration=0 --avgRuns=1 --exportTimes={times} 2>&1; code=$?; "
             "pkill -x tegrastats 2>/dev/null; exit $code")
    log(f"{measurement['name']}: timing {iters} inferences with trtexec")
    run = board.run(timed, timeout=3600, check=False)
    parsed = parse_output(parse_trtexec, run.stdout, "trtexec", board.read(times))
    apply_runner_output(measurement, parsed, run.returncode, "trtexec")
    measurement.update(runtime="trtexec", load_ms=built.get("init_ms"))
    measurement["extra"].update(trtexec_flags=flags, warmup_ms=TRTEXEC_WARMUP_MS if warmup else 0)
    samples = _tegrastats_samples(board.read(stats))
    seconds = parsed["extra"].get("total_host_walltime_s")
    inferences = parsed.get("iterations") or len(parsed["samples_ms"])
    if samples and seconds and inferences:
        measurement["energy_mj"], measurement["energy_note"] = energy_per_inference_mj(samples, inferences,
                                                                                       seconds)
    else:
        measurement["energy_note"] = ("tegrastats gave no samples (is this a Jetson? tegrastats must be on the "
                                      "PATH)" if not samples else "trtexec did not report its run time")
    return measurement


def _tegrastats_samples(text: str | None) -> list[dict]:
    try:
        return parse_tegrastats(text or "")
    except EdgevitError:  # no tegrastats on this board (or it printed an error): energy is reported as unknown
        return []


def measure(bundles, board: SshTarget, runner: str | None, warmup: int, iters: int, threads: int | None,
            skeleton, log, root: str = REMOTE_ROOT) -> tuple[list[dict], dict]:
    board.check_reachable()
    environment = board_environment(board)
    if runner and (runner == "edgevit" or runner.startswith("edgevit:")):
        python = runner.partition(":")[2] or "python3"
        launch = board.command(f"{shlex.quote(python)} -m edgevit.bench.worker")
        jobs = []
        for bundle in bundles:
            log(f"copying {bundle.path} to {board}")
            jobs.append(host.Job(skeleton(bundle, "onnxruntime"), {"bundle": copy_bundle(board, bundle, root)}))
        environment["matmul_peak_gflops"] = host.matmul_peak(launch, threads)
        return host.measure(jobs, launch, warmup, iters, threads, log=log), environment
    trtexec = find_trtexec(board, runner)
    return [measure_trtexec(board, bundle, trtexec, iters, warmup, skeleton(bundle, "trtexec"), log, root)
            for bundle in bundles], environment
