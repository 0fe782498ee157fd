"""`edgevit parity`: a 1-epoch T2T-ViT-7 on Fashion-MNIST, its bundles scored in their runtimes on held-out images.

One model is trained for the module (~30-60 s on one thread); parity runs on a 256-image class-balanced subset.
ExecuTorch is left out: its lowering alone would double the time.
"""
import json
import math

import pytest
import torch

import edgevit
from edgevit.bench.harness import top1_drop
from edgevit.cli import main
from edgevit.converters.bundle import read_bundle
from edgevit.data import fashion_mnist
from edgevit.errors import EdgevitError
from edgevit.parity import COLUMNS, parity
from edgevit.quantization.sensitivity import quantizable_layers
from edgevit.train import train

pytestmark = pytest.mark.skipif(not fashion_mnist.available(),
                                reason="Fashion-MNIST is absent (apt-get install dataset-fashion-mnist, or set "
                                       "EDGEVIT_FASHION_MNIST to a directory holding its IDX files)")
EVAL = dict(eval_samples=256, calib_samples=64, threads=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # two shared cores: a second OpenMP thread waiting on a busy core makes every step crawl
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    result = train("t2t_vit_7", data="fashion-mnist", img_size=32, epochs=1, train_samples=512, eval_samples=256,
                   out=tmp_path_factory.mktemp("run"), batch_size=64, log=None)
    yield result.checkpoint
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def report(checkpoint, tmp_path_factory):
    # the real budgets, with --max-drop at the PTQ budget: a 1-epoch model over it must be brought within it
    return parity("t2t_vit_7", checkpoint, "fashion-mnist", ["onnx", "tflite", "coreml"],
                  recipes=["onnx:int8", "tflite:dynamic-int8"], precisions=["onnx:fp32", "coreml:fp16"],
                  out=tmp_path_factory.mktemp("parity"), max_drop=0.5, **EVAL)


def test_every_artifact_is_scored_in_its_runtime_against_float(report):
    rows = {(row["target"], row["precision"]): row for row in report.rows}
    assert set(rows) == {("onnx", "fp32"), ("onnx", "int8"), ("tflite", "dynamic-int8"), ("coreml", "fp16")}
    assert report.eval_images == 256 and report.data == "fashion-mnist/test"
    assert report.calibration == "fashion-mnist/train"  # calibration never comes from the evaluation split
    assert 10 < report.reference["top1"] <= report.reference["top5"] <= 100
    for key in ("onnx", "fp32"), ("onnx", "int8"), ("tflite", "dynamic-int8"):
        row = rows[key]
        assert row["status"] == "ok", row
        assert row["top1_drop"] == pytest.approx(report.reference["top1"] - row["top1"])
        assert row["size_bytes"] > 0 and row["latency_ms"] > 0 and row["cosine_min"] <= row["cosine_mean"] <= 1 + 1e-9
    assert rows["onnx", "fp32"]["agreement"] == 100.0 and rows["onnx", "fp32"]["snr_db"] > 60
    for key in ("onnx", "int8"), ("tflite", "dynamic-int8"):  # the real int8 budget, with --max-drop's help
        assert rows[key]["top1_drop"] <= 0.5 and 10 < rows[key]["snr_db"] < 80
    if rows["onnx", "int8"].get("attempts"):  # the search ran: it says which layers stayed float
        assert rows["onnx", "int8"]["float_layers"] == rows["onnx", "int8"]["attempts"][-1]["float_layers"]
    assert rows["coreml", "fp16"]["status"] == "not run"  # Linux: built, not a failure
    assert report.passed, report.failures


def test_report_files_and_bundle_parity(report):
    saved = json.loads((report.out / "parity.json").read_text())
    assert saved["passed"] and len(saved["rows"]) == 4
    table = (report.out / "parity.md").read_text()
    assert "| " + " | ".join(COLUMNS) + " |" in table and "not run" in table
    for row in report.rows:
        bundle = read_bundle(row["bundle"])
        entry = json.loads((bundle.path / "parity.json").read_text())
        assert entry["eval_images"] == 256 and entry["status"] == row["status"]
        assert top1_drop(bundle) == (None if row["status"] == "not run" else pytest.approx(row["top1_drop"]))


def test_impossible_budget_fails_with_what_was_tried_and_the_worst_layers(checkpoint, tmp_path, capsys):
    # a negative --max-drop asks int8 to beat float by 5 points: no set of float layers gets there
    code = main(["parity", "t2t_vit_7", "--weights", str(checkpoint), "--targets", "onnx", "--precisions",
                 "--quantize", "dynamic-int8", "--eval-samples", "64", "--calib-samples", "32", "--threads", "1",
                 "--max-drop", "-5", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    [broken] = [line for line in err.splitlines() if line.startswith("edgevit: budget broken:")]
    assert "onnx dynamic-int8: top-1 drop" in broken and "nothing fits, tried dynamic-int8 with 0 float:" in broken
    assert "1 float:" in broken and "2 float:" in broken and "worst layers of onnx dynamic-int8" in err

    # the sensitivity ranking behind it: every layer quantizable() accepts, each with a finite SNR, worst first
    [row] = json.loads((tmp_path / "parity.json").read_text())["rows"]
    model = edgevit.create_model("t2t_vit_7", weights=checkpoint)
    graph = torch.export.export(model, (torch.zeros(1, 1, 32, 32),), strict=False).module()
    ranking = row["sensitivity"]
    assert sorted(name for name, _ in ranking) == sorted(quantizable_layers(graph))
    snrs = [snr for _, snr in ranking]
    assert all(snr is not None and math.isfinite(snr) for snr in snrs) and snrs == sorted(snrs)
    assert [name for name, _ in row["worst_layers"]] == [name for name, _ in ranking[:5]]
    assert [len(a["float_layers"]) for a in row["attempts"]] == [0, 1, 2, 4, 8, 16, 32]


def test_bad_input_is_refused_before_any_conversion(checkpoint, tmp_path):
    imagenet = tmp_path / "imagenet_head.pt"
    torch.save(edgevit.create_model("t2t_vit_7").state_dict(), imagenet)  # 1000 classes
    with pytest.raises(EdgevitError, match="predicts 1000 classes, the data has 10"):
        parity("t2t_vit_7", imagenet, "fashion-mnist", ["onnx"], out=tmp_path / "a")
    with pytest.raises(EdgevitError, match="not found"):
        parity("t2t_vit_7", tmp_path / "missing.pt", "fashion-mnist", ["onnx"], out=tmp_path / "b")
    with pytest.raises(EdgevitError, match="onnx target has no quantization recipe 'w8a8'. It offers: int8"):
        parity("t2t_vit_7", checkpoint, "fashion-mnist", ["onnx"], recipes=["w8a8"], out=tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
