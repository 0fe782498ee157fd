"""ONNX target: real dynamo export + onnxsim, run in ONNX Runtime; the census a Jetson user reads."""
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from edgevit.converters import onnx as onnx_target  # noqa: E402
from edgevit.errors import EdgevitError  # noqa: E402
from helpers import TINY  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.mark.parametrize("family", ["tnt", "t2t_performer", "nest_same", "crossvit"])
@pytest.mark.parametrize("precision,budget", [("fp32", 1e-4), ("fp16", 5e-3)])
def test_runs_in_onnxruntime_and_tensorrt_friendly(tmp_path, family, precision, budget):
    model = TINY[family]().eval()
    shape = model.pretrained_cfg["input_size"]
    artifact = tmp_path / onnx_target.ARTIFACT
    report = onnx_target.convert(model, torch.zeros(1, *shape), artifact, precision=precision)
    assert report["opset"] >= 18
    assert report["inputs"][0] == {"name": "pixel_values", "shape": [1, *shape], "dtype": "float32"}
    assert report["ops"].get("LayerNormalization", 0) > 0  # one op, as TensorRT wants it for fp16
    assert not report["tensorrt"]["unfriendly_ops"], report["tensorrt"]
    assert not {"Gather", "GatherND", "Resize", "ScatterND"} & set(report["ops"])
    images = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    assert np.abs(onnx_target.run(artifact, images) - expected).max() < budget


def test_fp16_keeps_the_performer_float32_end_to_end(tmp_path):
    """The T2T Performer's own ops stay float32 in the fp16 graph, values passing between them included: its
    epsilon term exp(80) is inf in fp16, which made NaN logits (T2T-ViT-7 on 1.3 % of Fashion-MNIST test images)."""
    import onnx
    from onnx import TensorProto

    model = TINY["t2t_performer"]().eval()
    with torch.no_grad():  # epsilon exponents at the cap: a fp16 round trip of exp(80) shows as inf/NaN
        model.tokens_to_token.attention1.kqv.weight.mul_(8.0)
    shape = model.pretrained_cfg["input_size"]
    artifact = tmp_path / onnx_target.ARTIFACT
    onnx_target.convert(model, torch.zeros(1, *shape), artifact, precision="fp16")
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(artifact))).graph
    producer = {output: node for node in graph.node for output in node.output}
    dtypes = {info.name: info.type.tensor_type.elem_type for info in graph.value_info}

    def casts_to(node, to):
        return node is not None and node.op_type == "Cast" and node.attribute[0].i == to
    exps = [node for node in graph.node if node.op_type == "Exp"]
    assert exps and all(dtypes[node.output[0]] == TensorProto.FLOAT for node in exps)
    assert not any(casts_to(node, TensorProto.FLOAT) and casts_to(producer.get(node.input[0]), TensorProto.FLOAT16)
                   for node in graph.node)  # no fp32 -> fp16 -> fp32 round trip left
    images = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    got = onnx_target.run(artifact, images)
    assert np.isfinite(got).all() and np.abs(got - expected).max() < 5e-2


def test_old_opset_is_refused(tmp_path):
    with pytest.raises(EdgevitError, match="opset 17 is too old"):
        onnx_target.convert(TINY["tnt"](), torch.zeros(1, 3, 32, 32), tmp_path / "m.onnx", opset=17)


def _int8_matmul_graph(tokens=64, width=16, outputs=8):
    """x -> Q/DQ -> MatMul with per-channel int8 weights -> Q/DQ, every quantized value at its int8 extreme, one
    zero point shared by all Q/DQ nodes (as the exporter writes them); the exact result is `width` everywhere."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    constants = [numpy_helper.from_array(np.full((width, outputs), 127, np.int8), "weight"),
                 numpy_helper.from_array(np.full(outputs, 1 / 127, np.float32), "weight_scale"),
                 numpy_helper.from_array(np.zeros(outputs, np.int8), "weight_zero"),
                 numpy_helper.from_array(np.array(1 / 127, np.float32), "input_scale"),
                 numpy_helper.from_array(np.array(0.25, np.float32), "output_scale"),
                 numpy_helper.from_array(np.array(0, np.int8), "zero")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "input_scale", "zero"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "input_scale", "zero"], ["xd"]),
             helper.make_node("DequantizeLinear", ["weight", "weight_scale", "weight_zero"], ["w"], axis=1),
             helper.make_node("MatMul", ["xd", "w"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "output_scale", "zero"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "output_scale", "zero"], ["logits"])]
    graph = helper.make_graph(nodes, "int8_matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                   [1, tokens, width])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, tokens, outputs])],
                              constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    return model, np.ones((1, tokens, width), np.float32)


def test_int8_products_are_exact_where_onnxruntime_would_saturate_them(tmp_path):
    # x86 without VNNI: ORT's default int8 GEMM shifts activations to uint8 and sums pairs in int16, so
    # 255 * 127 * 2 saturates; the exact option must be on, and it needs unshared zero points to load at all
    import onnx

    model, images = _int8_matmul_graph()
    shared = tmp_path / "shared_zero_point.onnx"  # as another tool writes it: runs too, the sharing undone in memory
    onnx.save(model, str(shared))
    assert np.abs(onnx_target.run(shared, images) - images.shape[-1]).max() <= 0.25
    assert onnx_target.separate_qdq_parameters(model) == 5  # zero: 4 users, the activation scales: 2 each
    names = [name for node in model.graph.node for name in node.input[1:]]
    assert len(names) == len(set(names))
    artifact = tmp_path / "int8.onnx"
    onnx.save(model, str(artifact))
    assert np.abs(onnx_target.run(artifact, images) - images.shape[-1]).max() <= 0.25
    assert onnx_target.inspect(artifact)["onnxruntime_int8"]["onnxruntime_session_config"] == \
        onnx_target.ORT_EXACT_INT8
