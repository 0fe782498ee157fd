"""The `edgevit` command as a user meets it: help, listing, info, convert, and bad input."""
import json
import subprocess
import sys

import pytest
import torch

from edgevit.cli import main
from helpers import TINY

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_help_explains_every_command():
    result = subprocess.run([sys.executable, "-m", "edgevit.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("list", "info", "convert", "export"):
        assert command in result.stdout
    convert_help = subprocess.run([sys.executable, "-m", "edgevit.cli", "convert", "--help"],
                                  capture_output=True, text=True).stdout
    assert "executorch, coreml, tflite, onnx, or all" in convert_help and "--image-input" in convert_help


def test_list_shows_every_family(capsys):
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["family"] for r in rows} == {"tnt", "t2t", "nest", "crossvit"} and len(rows) >= 33
    assert main(["list", "nest*"]) == 0
    out = capsys.readouterr().out
    assert "nest_tiny_jx" in out and "tnt_s" not in out


def test_info_reports_params_macs_and_census(capsys):
    assert main(["info", "t2t_vit_7", "--img-size", "64", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"]["total"] > 4e6 and info["macs"] > 0
    assert info["export"]["violations"] == [] and info["export"]["max_rank"] <= 4


def test_convert_writes_a_bundle_and_prints_a_summary(tmp_path, capsys):
    assert main(["convert", "tnt_ti", "--img-size", "32", "--target", "onnx", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "OK" in captured.out and "verified: cos" in captured.out
    assert "RANDOMLY INITIALISED" in captured.err
    manifest = json.loads((tmp_path / "tnt_ti" / "onnx-fp32" / "manifest.json").read_text())
    assert manifest["model"]["variant"] == "tnt_ti" and manifest["labels"] == "labels.txt"
    labels = (tmp_path / "tnt_ti" / "onnx-fp32" / "labels.txt").read_text().splitlines()
    assert len(labels) == 1000 and labels[0] == "tench"


def test_convert_keeps_toolchain_chatter_out_of_the_terminal(tmp_path):
    """coremltools' notices and progress bars, torchao's load failures: into OUT/MODEL/toolchains.log."""
    run = subprocess.run([sys.executable, "-m", "edgevit.cli", "convert", "tnt_ti", "--img-size", "32", "--target",
                          "coreml", "onnx", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "toolchains.log" in run.stdout and "OK" in run.stdout
    log = (tmp_path / "tnt_ti" / "toolchains.log").read_text()
    assert "coremltools" in log or "MIL" in log  # what coremltools says on every conversion
    for chatter in ("Failed to load", "MIL", "coremltools", "Warning"):
        assert chatter not in run.stderr, run.stderr


@pytest.mark.parametrize("argv,message", [
    (["convert", "tnt_x"], "unknown model 'tnt_x'. Did you mean"),
    (["convert", "tnt_ti", "--target", "tensorrt"], "unknown target 'tensorrt'"),
    (["convert", "tnt_ti", "--weights", "/nonexistent.pth"], "checkpoint not found"),
    # a check after the destination's: the folders the bundle would go in must not be left behind either
    (["convert", "tnt_ti", "--target", "onnx", "--quantize", "int8", "--calib-samples", "4"], "is too few"),
])
def test_bad_input_gets_one_clear_message(tmp_path, capsys, argv, message):
    assert main(argv + ["--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_weights_for_another_variant_are_refused(tmp_path, capsys):
    path = tmp_path / "nest.pth"
    torch.save(TINY["nest_same"]().state_dict(), path)
    assert main(["convert", "tnt_ti", "--weights", str(path), "--target", "onnx", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "does not fit tnt_ti" in err and "closest known variant" in err
    assert not (tmp_path / "tnt_ti").exists()
