"""Every quantization recipe, for real, on small models: the artifact runs in its runtime (Core ML: inspected),
stays close to the float model, keeps the float islands float and gets smaller."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgevit.convert import convert
from edgevit.data import fashion_mnist
from edgevit.errors import EdgevitError
from edgevit.models import Conv2d, layer_norm_form
from edgevit.quantization import RECIPES, get_recipe
from edgevit.quantization.islands import quantizable
from edgevit.quantization.pt2e import calibrated, exported_graph, quantized_linear_count
from edgevit.quantization.recipes import xnnpack_quantizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import TINY  # noqa: E402

needs_data = pytest.mark.skipif(not fashion_mnist.available(),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
CALIB = 16


@pytest.fixture(scope="module")
def float_bundles(tmp_path_factory):
    out = tmp_path_factory.mktemp("float")
    outcomes = convert(TINY["t2t_performer"](), targets=["executorch", "tflite", "onnx", "coreml"], out=out,
                       verify_samples=4)
    return {o.target: o for o in outcomes}


def test_executorch_dynamic_int8_runs_a_model_with_padded_convs(tmp_path):
    # XNNPACK lowers a dynamically quantized padded conv (NesT's block aggregation) but fails to run it
    [outcome] = convert(TINY["nest_symmetric"](), targets="executorch", out=tmp_path, quantize="dynamic-int8",
                        verify_samples=4)
    assert outcome.status == "ok", outcome.error
    assert outcome.report["delegation"]["partitions"] == 1


def test_tflite_dynamic_int8_quantizes_exactly_the_linears_it_may(tmp_path):
    # litert-torch's own dynamic mode made every FULLY_CONNECTED weight int8 whatever the PT2E graph said: the
    # Performer's random features and the modules --max-drop keeps float (a trained t2t_vit_7 kept 32 of its 38
    # Linears float and still lost 1.2 pt on 256 images)
    from ai_edge_litert.interpreter import Interpreter

    model = TINY["t2t_performer"]()
    kept = ["head", "blocks.0"]
    linears = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    allowed = [name for name in linears if not any(name == k or name.startswith(k + ".") for k in kept)]
    [outcome] = convert(model, targets="tflite", out=tmp_path, quantize="dynamic-int8", float_modules=kept,
                        verify_samples=4)
    assert outcome.status == "ok", outcome.error
    interpreter = Interpreter(model_path=str(outcome.bundle / "model.tflite"))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    weights = [tensors[op["inputs"][1]] for op in interpreter._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]
    int8 = [w for w in weights if w["dtype"] == np.int8]
    performer_features = 2 * sum(type(m).__name__ == "TokenPerformer" for m in model.modules())
    assert performer_features >= 2 and len(allowed) < len(linears) - 1
    assert len(int8) == len(allowed) == outcome.report["quantization"]["int8_linear"]
    assert len(weights) - len(int8) == outcome.report["quantization"]["float_linear"] \
        == len(linears) - len(allowed) + performer_features
    assert outcome.report["fully_accelerated"] and outcome.verification["metrics"]["cosine_min"] > 0.999


@needs_data
def test_executorch_int8_keeps_gemm_form_conv_weights_int8(tmp_path):
    # ExecuTorch lowers convs as GEMMs over patches, their weights reshaped in the graph and folded to constants;
    # the folding must stop at the int8 weights, not turn them back into float ones
    model = TINY["nest_symmetric"]()
    gemm_convs = sum(isinstance(m, Conv2d) and m.has_gemm_form for m in model.modules())
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    [outcome] = convert(model, targets="executorch", out=tmp_path, quantize="int8", calib_samples=CALIB,
                        verify_samples=4)
    assert outcome.status == "ok", outcome.error
    delegated = outcome.report["delegation"]["delegated_ops"]
    assert gemm_convs >= 2 and "convolution" not in delegated
    assert delegated.get("quantized_decomposed_dequantize_per_channel", 0) == gemm_convs + linears


@needs_data
@pytest.mark.parametrize("target, recipe", sorted(RECIPES))
def test_every_recipe_converts_verifies_and_shrinks(target, recipe, float_bundles, tmp_path):
    [outcome] = convert(TINY["t2t_performer"](), targets=target, out=tmp_path, quantize=recipe,
                        calib_samples=CALIB, verify_samples=4)
    assert outcome.status == "ok", outcome.error
    assert outcome.bundle.name == f"{target}-{get_recipe(target, recipe).precision}"
    quantization = outcome.report["quantization"]
    assert quantization["recipe"] == recipe
    if get_recipe(target, recipe).calibration:
        assert quantization["calibration"]["source"] == "fashion-mnist/train"
        assert quantization["calibration"]["samples"] == CALIB
    if "int8_linear" in quantization:  # graph recipes: Linear/Conv in int8, the Performer's features float
        assert quantization["int8_linear"] > 0 and quantization["float_linear"] >= 2
    if target == "coreml":
        assert outcome.verification["status"] == "not run"
    else:
        metrics = outcome.verification["metrics"]
        assert metrics["cosine_min"] > 0.98, metrics
    if target == "onnx":  # the report describes the quantized artifact, with what ONNX Runtime needs to run it
        assert outcome.report["ops"].get("DynamicQuantizeLinear" if recipe == "dynamic-int8" else "QuantizeLinear")
        assert outcome.report["onnxruntime_int8"]["onnxruntime_session_config"] == {"session.x64quantprecision": "1"}
    if target == "executorch":
        assert outcome.report["delegation"]["partitions"] == 1
        assert outcome.report["delegation"]["undelegated_compute_ops"] == 0
    if "vs_quantized_graph" in outcome.verification:  # the runtime computes what the quantized graph computes
        assert outcome.verification["vs_quantized_graph"]["cosine_min"] > 0.999
    float_bytes = float_bundles[target].size_bytes * (2 if target == "coreml" else 1)  # Core ML's float is fp16
    assert outcome.size_bytes < 0.65 * float_bytes  # per-channel scales weigh on a model this small


def test_layer_norm_statistics_and_performer_features_are_never_annotated():
    model = TINY["t2t_performer"]().eval()
    x = torch.randn(1, *model.pretrained_cfg["input_size"])
    with layer_norm_form(model, "matmul"):
        graph = torch.export.export(model, (x,), strict=False).module()
    accept = quantizable(float_modules=["blocks.1"])
    decisions = {}
    for node in graph.graph.nodes:
        if node.op == "call_function":
            stack = [kind for _, kind in (node.meta.get("nn_module_stack") or {}).values()]
            owner = str(stack[-1]) if stack else ""
            names = [name for name, _ in (node.meta.get("nn_module_stack") or {}).values()]
            decisions.setdefault((str(node.target), owner.rsplit(".", 1)[-1].strip("'>"), "blocks.1" in
                                  " ".join(names) or "blocks_1" in " ".join(names)), set()).add(accept(node))
    # the averaging matmuls are F.linear, the very op quantizers take: only the island keeps them float
    assert decisions[("aten.linear.default", "LayerNorm", False)] == {False}
    assert decisions[("aten.linear.default", "TokenPerformer", False)] == {False}  # prm_exp's random features
    assert decisions[("aten.linear.default", "Linear", False)] == {True}
    assert decisions[("aten.linear.default", "Linear", True)] == {False}  # kept float on request
    assert not any(True in accepted for (op, _, _), accepted in decisions.items()
                   if op in ("aten.add.Tensor", "aten.mul.Tensor", "aten.bmm.default", "aten._softmax.default"))


@needs_data
def test_the_quantized_graph_stays_close_to_float():
    model = TINY["tnt"]().eval()
    x = torch.randn(1, *model.pretrained_cfg["input_size"])
    images = [torch.randn(1, *model.pretrained_cfg["input_size"]) for _ in range(8)]
    with layer_norm_form(model, "matmul"):
        quantized = calibrated(model, x, xnnpack_quantizer(dynamic=False), images, "executorch int8")
        cosine = torch.nn.functional.cosine_similarity(model(x), quantized(x)).item()
    assert cosine > 0.99 and quantized.family == model.family


def test_xnnpack_quantization_folds_layer_norm_affines_first():
    """The q/dq pairs PT2E puts between a LayerNorm's `y * g + b` and its Linears hid the pattern from the
    converter's fold: the int8 .pte kept two elementwise passes per LayerNorm."""
    torch.manual_seed(0)
    model = TINY["tnt"]().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 2.0)
                module.bias.normal_(0.0, 0.1)
    x = torch.randn(1, *model.pretrained_cfg["input_size"])
    multiplies = lambda graph: sum(node.target is torch.ops.aten.mul.Tensor for node in graph.graph.nodes)
    with layer_norm_form(model, "matmul"), torch.no_grad():
        folded, plain = exported_graph(model, x, "executorch"), exported_graph(model, x)
        assert multiplies(folded) < multiplies(plain)
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)
        quantized = calibrated(model, x, xnnpack_quantizer(dynamic=False), [x], "executorch int8",
                               target="executorch")
        assert multiplies(quantized.graph_module) <= multiplies(folded)
        assert quantized_linear_count(quantized)["folded_layer_norm_affines"] > 0  # what the manifest reports
        assert torch.nn.functional.cosine_similarity(model(x), quantized(x)).item() > 0.99


@needs_data
def test_tflite_int8_concatenation_keeps_the_patch_tokens_range(tmp_path):
    """CrossViT concatenates its int8 CLS projection with float patch tokens: litert-torch would quantize the whole
    concatenation with the CLS scale. A CLS range 100x narrower than the patches' made that visible (cosine 0.54;
    0.989-0.997 over five seeds since)."""
    torch.manual_seed(0)  # the logit cosine depends on the initialisation
    model = TINY["crossvit"]().eval()
    with torch.no_grad():
        for block in model.blocks:
            for projection in list(block.projs) + list(block.revert_projs):
                projection[-1].weight.mul_(0.01)
                projection[-1].bias.mul_(0.01)
    [outcome] = convert(model, targets="tflite", out=tmp_path, quantize="int8", calib="fashion-mnist",
                        calib_samples=CALIB, verify_samples=4)
    assert outcome.status == "ok", outcome.error
    assert outcome.verification["metrics"]["cosine_min"] > 0.99


@needs_data
def test_tflite_int8_patch_embedding_behind_a_reshape_keeps_the_cls_token(tmp_path):
    """The patch embedding's conv reaches the CLS concatenation through a permute and a flatten: litert-torch
    quantized the CLS token with the patch tokens' scale there too (random-init crossvit_9_240: cosine 0.95 to
    its own quantized graph, failing verification). Patch tokens 30x wider than the CLS token show it."""
    model = TINY["crossvit"]().eval()
    with torch.no_grad():
        for embed in model.patch_embed:
            embed.proj.weight.mul_(30.0)
    [outcome] = convert(model, targets="tflite", out=tmp_path, quantize="int8", calib="fashion-mnist",
                        calib_samples=CALIB, verify_samples=4)
    assert outcome.status == "ok", outcome.error
    assert outcome.verification["vs_quantized_graph"]["cosine_min"] > 0.99


@pytest.mark.parametrize("kwargs, message", [
    ({"targets": "executorch", "quantize": "w8a8"}, "no quantization recipe 'w8a8'.*It offers: int8"),
    ({"targets": "coreml", "quantize": "fp16"}, "fp16 is a precision, not a recipe"),
    ({"targets": "onnx", "quantize": "int8", "precision": "fp16"}, "--precision and --quantize are exclusive"),
    ({"targets": "onnx", "quantize": "int8", "calib_samples": 2}, "too few"),
    ({"targets": "onnx", "quantize": "int8", "calib": "/nowhere"}, "nowhere"),
])
def test_bad_quantization_requests_fail_before_converting(kwargs, message, tmp_path):
    with pytest.raises(EdgevitError, match=message):
        convert(TINY["t2t_performer"](), out=tmp_path, **kwargs)
    assert not any(tmp_path.rglob("manifest.json"))


@needs_data
def test_all_targets_with_a_recipe_some_lack_skips_those_and_says_so(tmp_path):
    outcomes = {o.target: o for o in convert(TINY["t2t_performer"](), targets=["onnx", "coreml"], out=tmp_path,
                                             quantize="dynamic-int8", verify_samples=2)}
    assert outcomes["onnx"].status == "ok"
    assert outcomes["coreml"].status == "skipped" and "It offers: w8a8" in outcomes["coreml"].error
