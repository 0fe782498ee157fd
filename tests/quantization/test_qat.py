"""`edgevit qat`: PT2E quantization-aware fine-tuning of a trained float model, and the qat.pt it writes converting
to a verified int8 bundle of its target (manifest recipe qat-int8).

A t2t_vit_7 trained for seconds at 32x32 on a Fashion-MNIST subset, QAT for a couple of steps, one CPU thread.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgevit.cli import main
from edgevit.convert import convert
from edgevit.data import fashion_mnist
from edgevit.errors import EdgevitError
from edgevit.quantization.qat import (KIND, QAT_RECIPE, converted, fake_quant_state, float_origin, load, prepare,
                                      qat, read_qat, rebuild)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import TINY  # noqa: E402

needs_data = pytest.mark.skipif(not fashion_mnist.available(),
                                reason="Fashion-MNIST is absent (apt-get install dataset-fashion-mnist, or set "
                                       "EDGEVIT_FASHION_MNIST to a directory holding its IDX files)")
MODEL = "t2t_vit_7"
QUICK = dict(epochs=1, train_samples=128, eval_samples=64, batch_size=64, log=None)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # two shared cores: a second OpenMP thread waiting on a busy core makes every step crawl
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory, one_thread):
    from edgevit.train import train

    out = tmp_path_factory.mktemp("float")
    return train(MODEL, data="fashion-mnist", img_size=32, epochs=1, train_samples=256, eval_samples=128,
                 batch_size=64, out=out, log=None).checkpoint


@pytest.fixture(scope="module")
def qat_runs(float_checkpoint, tmp_path_factory):
    """target -> QatResult, each run once for the module."""
    runs = {}

    def run(target):
        if target not in runs:
            runs[target] = qat(MODEL, float_checkpoint, target, out=tmp_path_factory.mktemp(f"qat-{target}"), **QUICK)
        return runs[target]
    return run


@pytest.mark.parametrize("target", ["onnx", "tflite"])
@needs_data
def test_qat_checkpoint_converts_to_a_verified_int8_bundle(target, qat_runs, tmp_path):
    result = qat_runs(target)
    saved = torch.load(result.checkpoint, map_location="cpu", weights_only=True)  # tensors and plain data only
    metadata = saved["edgevit"]
    assert metadata["kind"] == KIND and metadata["variant"] == MODEL
    info = metadata["qat"]
    assert info["target"] == target and info["recipe"] == QAT_RECIPE and info["train_samples"] == 128
    assert info["layer_norm"] == "native" and info["epochs"] == 1 and info["seed"] == 0
    assert info["graph_rewrites"] == {}  # the LayerNorm fold is XNNPACK's only
    assert info["loss"].startswith("distillation") and info["label_smoothing"] == 0.0
    scores = info["metrics"]
    assert scores["test_samples"] == 64
    for entry in (scores["before"]["float"], scores["before"]["int8"], scores["after"]["int8"],
                  scores["after"]["float"]):
        assert 0 <= entry["top1"] <= entry["top5"] <= 100
    assert scores["after"]["int8"] == {k: scores["epochs"][-1][k] for k in ("test_loss", "top1", "top5")}
    # two steps at lr 1e-5 barely move the weights: a collapse (NaN gradients) shows as a lost model
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values() if t.is_floating_point())
    assert scores["after"]["float"]["top1"] >= scores["before"]["float"]["top1"] - 10
    assert saved["qat_state"] and all(k.startswith("activation_post_process_") for k in saved["qat_state"])
    assert json.loads((result.out / "metrics.json").read_text()) == json.loads(json.dumps(result.metrics))

    [outcome] = convert(MODEL, targets=target, weights=result.checkpoint, out=tmp_path, verify_samples=4)
    assert outcome.status == "ok", outcome.error
    assert outcome.bundle.name == f"{target}-qat-int8"
    manifest = json.loads((outcome.bundle / "manifest.json").read_text())
    quantization = manifest["quantization"]
    assert quantization["recipe"] == "qat-int8" and quantization["qat"] is True
    assert quantization["calibration"] is None and quantization["checkpoint"] == str(result.checkpoint)
    assert quantization["top1_qat"] == scores["after"]["int8"]["top1"]
    assert quantization["top1_float"] == scores["before"]["float"]["top1"]
    assert quantization["int8_linear"] > 0 and quantization["float_linear"] >= 2  # the Performer stays float
    verification = manifest["verification"]
    assert verification["status"] == "passed"
    assert verification["metrics"]["cosine_min"] > 0.98, verification  # vs the fine-tuned float model
    assert verification["vs_quantized_graph"]["cosine_min"] > 0.999, verification  # vs the rebuilt QAT graph
    assert manifest["weights"]["source"] == str(result.checkpoint)

    if target == "onnx":  # QDQ for TensorRT: symmetric, so every zero point is 0, and the weights are int8
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(str(outcome.bundle / "model.onnx")).graph
        initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        dequantize = [n for n in graph.node if n.op_type == "DequantizeLinear"]
        assert dequantize
        zero_points = [initializers[n.input[2]] for n in dequantize if len(n.input) > 2 and n.input[2] in initializers]
        assert zero_points and all(not np.any(z) for z in zero_points)
        # each Q/DQ node has its own zero point, or ONNX Runtime's exact-int8 option fails to load the model
        qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
        assert len({n.input[2] for n in qdq}) == len(qdq)
        assert manifest["report"]["onnxruntime_int8"]["onnxruntime_session_config"] == \
            {"session.x64quantprecision": "1"}
        assert sum(a.size for a in initializers.values() if a.dtype == np.int8) > 1_000_000


@needs_data
def test_qat_pt_rebuilds_the_trained_quantized_model(qat_runs):
    """The qat.pt alone gives back the model QAT evaluated: the same test top-1 (at batch 1 instead of 64)."""
    from edgevit.data.datasets import balanced_indices, load_images
    from edgevit.data.transforms import to_model_input

    result = qat_runs("onnx")
    model, quantized = load(result.checkpoint)
    assert quantized.recipe == QAT_RECIPE and quantized.variant == MODEL
    test = load_images("fashion-mnist", "test")
    test = test.subset(balanced_indices(test.labels, 64, 0))
    x = to_model_input(test.images, model.pretrained_cfg)
    with torch.no_grad():
        predicted = torch.cat([quantized(image[None]) for image in x]).argmax(1)
    top1 = 100.0 * float((predicted == torch.from_numpy(test.labels)).float().mean())
    assert abs(top1 - result.metrics["metrics"]["after"]["int8"]["top1"]) <= 100.0 / 64 + 1e-6


@needs_data
def test_parity_of_a_qat_pt_measures_against_the_float_model_it_came_from(float_checkpoint, qat_runs, tmp_path):
    from edgevit.parity import parity

    checkpoint = qat_runs("onnx").checkpoint
    quick = dict(targets=["onnx"], eval_samples=64, calib_samples=16)
    report = parity(MODEL, checkpoint, out=tmp_path / "origin", **quick)
    [row] = report.rows
    assert row["precision"] == QAT_RECIPE and row["kind"] == "qat" and row["status"] in ("ok", "over budget")
    assert report.reference["weights"] == str(float_checkpoint)
    assert f"float reference `{float_checkpoint}`" in (tmp_path / "origin" / "parity.md").read_text()

    # the origin moved or changed: the qat.pt's own fine-tuned float weights are the reference, unless one is given
    assert float_origin(checkpoint) == Path(float_checkpoint)
    saved = torch.load(checkpoint, weights_only=True)
    saved["edgevit"]["qat"]["from_checkpoint"] = str(tmp_path / "gone.pt")
    orphan = tmp_path / "orphan.pt"
    torch.save(saved, orphan)
    assert float_origin(orphan) is None
    report = parity(MODEL, orphan, reference_weights=float_checkpoint, out=tmp_path / "explicit", **quick)
    assert report.reference["weights"] == str(float_checkpoint)
    assert report.rows[0]["top1_drop"] == pytest.approx(report.reference["top1"] - report.rows[0]["top1"])


@needs_data
def test_same_seed_same_qat_weights(float_checkpoint, qat_runs, tmp_path):
    first = torch.load(qat_runs("onnx").checkpoint, weights_only=True)
    second = torch.load(qat(MODEL, float_checkpoint, "onnx", out=tmp_path, **QUICK).checkpoint, weights_only=True)
    for part in ("state_dict", "qat_state"):
        assert first[part].keys() == second[part].keys()
        assert all(torch.equal(first[part][k], second[part][k]) for k in first[part]), part
    scores = [{**run["edgevit"]["qat"]["metrics"], "epochs": [{k: v for k, v in e.items() if k != "seconds"}
                                                              for e in run["edgevit"]["qat"]["metrics"]["epochs"]]}
              for run in (first, second)]
    assert scores[0] == scores[1]
    before = torch.load(float_checkpoint, weights_only=True)["state_dict"]
    assert any(not torch.equal(before[k], first["state_dict"][k]) for k in before)  # it did fine-tune


@needs_data
def test_bad_inputs_are_refused_clearly(float_checkpoint, qat_runs, tmp_path):
    with pytest.raises(EdgevitError, match="unknown QAT target 'tensorrt'"):
        qat(MODEL, float_checkpoint, "tensorrt", out=tmp_path / "x", **QUICK)
    plain = tmp_path / "plain.pt"
    torch.save(torch.load(float_checkpoint, weights_only=True)["state_dict"], plain)
    with pytest.raises(EdgevitError, match="not a trained edgevit checkpoint"):
        qat(MODEL, plain, "onnx", out=tmp_path / "x", **QUICK)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(EdgevitError, match="not a trained edgevit checkpoint"):
        qat(MODEL, junk, "onnx", out=tmp_path / "x", **QUICK)
    with pytest.raises(EdgevitError, match="checkpoint not found"):
        qat(MODEL, tmp_path / "absent.pt", "onnx", **QUICK)
    with pytest.raises(EdgevitError, match="at least 1"):
        qat(MODEL, float_checkpoint, "onnx", out=tmp_path / "x", **dict(QUICK, epochs=0))

    onnx_qat = qat_runs("onnx").checkpoint
    assert read_qat(onnx_qat)["qat"]["target"] == "onnx" and read_qat(float_checkpoint) is None
    with pytest.raises(EdgevitError, match="already a QAT checkpoint"):
        qat(MODEL, onnx_qat, "onnx", out=tmp_path / "x", **QUICK)
    with pytest.raises(EdgevitError, match="exists; pass --force"):
        qat(MODEL, float_checkpoint, "onnx", out=onnx_qat.parent, **QUICK)
    with pytest.raises(EdgevitError, match="trained for onnx.*converts to onnx only"):
        convert(MODEL, targets="executorch", weights=onnx_qat, out=tmp_path / "out")
    with pytest.raises(EdgevitError, match="quantization-aware trained"):
        convert(MODEL, targets="onnx", weights=onnx_qat, out=tmp_path / "out", quantize="int8")
    with pytest.raises(EdgevitError, match="quantization-aware trained"):
        convert(MODEL, targets="onnx", weights=onnx_qat, out=tmp_path / "out", precision="fp16")
    with pytest.raises(EdgevitError, match="converts the output of `edgevit qat`"):
        convert(MODEL, targets="onnx", weights=float_checkpoint, out=tmp_path / "out", quantize="qat-int8")

    assert main(["qat", MODEL, "--weights", str(plain), "--target", "onnx", "--out", str(tmp_path / "cli")]) == 1
    with pytest.raises(SystemExit):  # argparse: not one of the targets
        main(["qat", MODEL, "--weights", str(float_checkpoint), "--target", "tensorrt"])


def test_stochastic_depth_is_not_traced_into_the_qat_graph():
    """NesT trains with drop path; a traced random mask would survive move_exported_model_to_eval and convert."""
    model = TINY["nest_same"]().eval()
    assert any(getattr(m, "drop_prob", 0) > 0 for m in model.modules())
    x = torch.randn(2, *model.pretrained_cfg["input_size"])
    prepared = prepare(model, x, "executorch")
    assert not any("bernoulli" in str(node.target) or "rand" in str(node.target) for node in prepared.graph.nodes)
    assert not model.training and any(getattr(m, "drop_prob", 0) > 0 for m in model.modules())  # restored
    graph = converted(prepared, "executorch")
    with torch.no_grad():
        assert torch.equal(graph(x), graph(x))


def test_executorch_qat_folds_layer_norm_affines_and_still_trains_them(tmp_path):
    """The LayerNorm gains and shifts the .pte folds into Linears are folded in the QAT graph too, computed there
    from the live parameters: the fake-quant sees the weights the .pte will hold, the gains still learn, and the
    QAT .pte has the float .pte's elementwise passes, not two more per LayerNorm."""
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    from edgevit.converters import executorch as executorch_target
    from edgevit.converters import target_forms
    from edgevit.quantization.pt2e import QuantizedModel, exported_graph

    torch.manual_seed(0)
    model = TINY["tnt"]().eval()
    for module in model.modules():  # away from 1 and 0, so an unfolded or lost affine shows
        if isinstance(module, torch.nn.LayerNorm):
            torch.nn.init.normal_(module.weight, 1.0, 0.3)
            torch.nn.init.normal_(module.bias, 0.0, 0.3)
    x = torch.randn(1, *model.pretrained_cfg["input_size"])
    prepared = prepare(model, x, "executorch")
    folded = prepared.meta["rewrites"]["folded_layer_norm_affines"]
    with target_forms(model, executorch_target):
        float_graph = exported_graph(model, x)
        assert folded == exported_graph(model, x, "executorch").meta["rewrites"]["folded_layer_norm_affines"] > 0
    float_muls = sum(str(node.target) == "aten.mul.Tensor" for node in float_graph.graph.nodes)

    for module in prepared.modules():  # fake-quant off: the folded graph computes the float model
        if isinstance(module, FakeQuantizeBase):
            module.disable_fake_quant()
            module.disable_observer()
    move_exported_model_to_eval(prepared)
    with torch.no_grad():
        torch.testing.assert_close(prepared(x), model(x), rtol=1e-4, atol=1e-4)
    move_exported_model_to_train(prepared)
    prepared(x).sum().backward()
    gains = [m.weight.grad for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert all(grad is not None and grad.abs().sum() > 0 for grad in gains)

    for module in prepared.modules():
        if isinstance(module, FakeQuantizeBase):
            module.enable_fake_quant()
            module.enable_observer()
    with torch.no_grad():
        prepared(x)
    graph = converted(prepared, "executorch")
    report = executorch_target.convert(QuantizedModel(graph, model, QAT_RECIPE), x, tmp_path / "model.pte")
    delegation = report["delegation"]
    assert delegation["partitions"] == 1 and delegation["undelegated_compute_ops"] == 0
    assert delegation["delegated_ops"]["mul_tensor"] == float_muls - folded
    assert "mv" not in delegation["delegated_ops"]  # the computed weights became int8 constants

    # a qat.pt trained on the unfolded graph (before this fold, or with other rewrites) is refused, not misread
    state = fake_quant_state(prepared)
    with pytest.raises(EdgevitError, match="other rewrites .none.*run `edgevit qat` again"):
        rebuild(model, x, "executorch", state, trained_rewrites={})
    assert rebuild(model, x, "executorch", state, trained_rewrites=prepared.meta["rewrites"]).rewrites == \
        {"folded_layer_norm_affines": folded}


def test_summary_advises_ptq_when_qat_lost_to_its_calibrated_start():
    from edgevit.quantization.qat import PTQ_RECIPES, TARGETS, summary
    from edgevit.quantization.recipes import RECIPES

    assert all((target, PTQ_RECIPES[target]) in RECIPES for target in TARGETS)

    def metrics(calibrated: float, after: float) -> dict:
        scores = lambda top1: {"top1": top1}  # noqa: E731
        return {"model": MODEL, "target": "tflite", "metrics": {
            "before": {"float": scores(75.0), "int8": scores(calibrated)},
            "after": {"float": scores(74.9), "int8": scores(after)},
            "test_samples": 2000, "test": "fashion-mnist/test"}}

    assert "\n" not in summary(metrics(74.6, 74.8))
    advice = summary(metrics(74.6, 74.5)).splitlines()[1]
    assert "below its calibrated start" in advice
    assert f"edgevit convert {MODEL} --target tflite --quantize int8" in advice
