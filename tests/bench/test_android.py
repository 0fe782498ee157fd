"""The Android flow against the real adb binary, up to "no device"; the runner command lines it would run."""
import shutil
import subprocess

import pytest

from edgevit.bench import android, bench
from edgevit.errors import EdgevitError

needs_adb = pytest.mark.skipif(shutil.which("adb") is None, reason="adb not installed (apt-get install adb)")


@pytest.fixture(scope="module", autouse=True)
def stop_adb_server():
    yield
    if shutil.which("adb"):
        subprocess.run(["adb", "kill-server"], capture_output=True, timeout=60)  # the tests started it


@needs_adb
def test_no_phone_gives_a_clear_message(small_bundles, tmp_path):
    runner = tmp_path / "benchmark_model"
    runner.write_bytes(b"\x7fELF")
    assert android.connected_devices() == []  # real adb, no phone on a CI machine
    with pytest.raises(EdgevitError, match="no Android device is connected.*USB debugging"):
        bench([small_bundles["tflite"]], device="android", runners=[runner])
    with pytest.raises(EdgevitError, match="no Android device is connected"):
        bench([small_bundles["tflite"]], device="android:emulator-5554", runners=[runner])


def test_a_missing_runner_says_how_to_get_one(small_bundles):
    with pytest.raises(EdgevitError, match=r"no runner for tflite \(pass --runner PATH/TO/benchmark_model\).*docs/bench.md"):
        bench([small_bundles["tflite"]], device="android")
    with pytest.raises(EdgevitError, match="runner /nowhere/executor_runner does not exist"):
        bench([small_bundles["executorch"]], device="android", runners=["/nowhere/executor_runner"])


def test_runners_are_matched_to_targets_by_name(tmp_path):
    tflite, executorch, other = (tmp_path / name for name in ("benchmark_model_arm64", "xnn_executor_runner", "runner"))
    for path in (tflite, executorch, other):
        path.write_text("")
    assert android.match_runners([tflite, executorch], ["tflite", "executorch"]) == {"tflite": tflite,
                                                                                   "executorch": executorch}
    assert android.match_runners([other], ["executorch"]) == {"executorch": other}
    with pytest.raises(EdgevitError, match="cannot tell which target"):
        android.match_runners([other, tflite], ["tflite", "executorch"])


def test_runner_command_lines_carry_the_harness_settings():
    tflite = android.runner_command("tflite", "/data/local/tmp/edgevit/benchmark_model", "/d/model.tflite",
                                    iters=50, warmup=10, threads=4)
    for flag in ("--graph=/d/model.tflite", "--num_threads=4", "--warmup_runs=10", "--num_runs=50",
                 "--use_xnnpack=true", "--report_peak_memory_footprint=true"):
        assert flag in tflite
    pte = android.runner_command("executorch", "/r/executor_runner", "/d/model.pte", iters=20, warmup=3, threads=2)
    warm, timed = pte.split("; ")
    assert "--num_executions=3" in warm and "--num_executions=20" in timed and "--cpu_threads=2" in timed
    assert "--num_executions=0" not in android.runner_command("executorch", "r", "m", 5, 0, 1)
    wrapped = android.pss_wrapped(tflite)
    assert "dumpsys meminfo $pid" in wrapped and "EDGEVIT_EXIT" in wrapped and "EDGEVIT_PSS_KB" in wrapped
    assert android.adb("SERIAL", "shell", "true")[1:] == ["-s", "SERIAL", "shell", "true"]
