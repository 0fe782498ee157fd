"""ExecuTorch target: real XNNPACK lowering of each family's small configuration, run in the ExecuTorch runtime."""
import numpy as np
import pytest
import torch

pytest.importorskip("executorch")

from edgevit.converters import executorch  # noqa: E402
from edgevit.errors import EdgevitError  # noqa: E402
from edgevit.models import layer_norm_form  # noqa: E402
from helpers import TINY  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.mark.parametrize("family", ["tnt", "t2t_performer", "nest_same", "crossvit_dagger"])
def test_one_xnnpack_partition_and_matches_eager(tmp_path, family):
    model = TINY[family]().eval()
    shape = model.pretrained_cfg["input_size"]
    artifact = tmp_path / executorch.ARTIFACT
    with layer_norm_form(model, executorch.LAYER_NORM):
        report = executorch.convert(model, torch.zeros(1, *shape), artifact)
    delegation = report["delegation"]
    assert delegation["partitions"] == 1, delegation
    assert delegation["undelegated_compute_ops"] == 0, delegation["undelegated_ops"]
    assert report["backends"] == ["XnnpackBackend"] and report["portable_kernels"] == []
    assert report["inputs"][0]["shape"] == [1, *shape]
    images = np.random.default_rng(0).standard_normal((3, *shape)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    assert np.abs(executorch.run(artifact, images) - expected).max() < 1e-4
    assert executorch.inspect(artifact)["num_delegate_calls"] == 1


def test_native_layer_norm_splits_the_graph(tmp_path):
    """Why the target asks for the matmul form: every native LayerNorm breaks the XNNPACK graph."""
    model = TINY["tnt"]().eval()
    report = executorch.convert(model, torch.zeros(1, 3, 32, 32), tmp_path / "native.pte")
    assert report["delegation"]["partitions"] > 1
    assert "native_layer_norm" in report["delegation"]["undelegated_ops"]


def test_toolchain_failure_names_the_stage(tmp_path):
    class ValueBranch(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x  # Python branching on a value: strict export refuses it

    with pytest.raises(EdgevitError, match="ExecuTorch conversion failed at the export stage"):
        executorch.convert(ValueBranch(), torch.randn(1, 4), tmp_path / "bad.pte")
    assert not (tmp_path / "bad.pte").exists()
