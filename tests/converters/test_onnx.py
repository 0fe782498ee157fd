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


def test_old_opset_is_refused(tmp_path):
    with pytest.raises(EdgevitError, match="opset 17 is too old"):
        onnx_target.convert(TINY["tnt"](), torch.zeros(1, 3, 32, 32), tmp_path / "m.onnx", opset=17)
