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


@pytest.mark.parametrize("family", ["tnt", "t2t_performer", "t2t_transformer", "nest_same", "crossvit_dagger"])
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


class ConvBatchNorm(torch.nn.Module):
    """Ops that some skippable XNNPACK passes rewrite: a batch norm after a conv, a 1-D conv."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(8)
        self.conv1d = torch.nn.Conv1d(8, 4, 3, padding=1)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(self.norm(self.conv(x)), 2)
        return self.conv1d(x.flatten(2))


@pytest.mark.parametrize("family", ["tnt", "batch_norm"])
def test_faster_lowering_skips_only_passes_with_nothing_to_rewrite(tmp_path, family):
    """The same .pte behaviour with and without the pass pruning; the pruning skips passes on ViTs only."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from edgevit.converters.executorch_lowering import faster_lowering

    model = (TINY["tnt"]() if family == "tnt" else ConvBatchNorm()).eval()
    example = torch.zeros(1, 3, 32, 32)
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    outputs, partitions = [], []
    for prune in (False, True):
        with layer_norm_form(model, executorch.LAYER_NORM):  # lowering consumes the program: one each
            program = torch.export.export(model, (example,), strict=False)
        if prune:
            with faster_lowering() as skipped:
                edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        else:
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        artifact = tmp_path / f"{prune}.pte"
        artifact.write_bytes(edge.to_executorch().buffer)
        outputs.append(executorch.run(artifact, images))
        partitions.append(executorch.inspect(artifact)["num_delegate_calls"])
    assert partitions[0] == partitions[1] == 1
    assert np.array_equal(outputs[0], outputs[1])
    if family == "tnt":
        assert {"FuseBatchNormPass", "PReLUReshapePass", "ConvertToSDPAPass"} <= set(skipped)
    else:  # a graph with batch norm and a 1-D conv runs those passes
        assert not {"FuseBatchNormPass", "Conv1dUnsqueezePass"} & set(skipped)
        assert "DecomposeBatchNorm" in skipped  # judged on the graph it gets: the fusion left no batch norm


class _NormsIntoLinears(torch.nn.Module):
    """Each way a LayerNorm's output is read: by one Linear, by two (TNT's qk and v), by a bias-free Linear, and by
    a Linear plus a residual add (that one must stay unfolded)."""

    def __init__(self, width: int = 12) -> None:
        super().__init__()
        from edgevit.models.layers import LayerNorm

        self.norms = torch.nn.ModuleList(LayerNorm(width) for _ in range(4))
        for norm in self.norms:  # non-trivial scale and shift, so a wrong fold shows
            torch.nn.init.normal_(norm.weight, 1.0, 0.5)
            torch.nn.init.normal_(norm.bias, 0.0, 0.5)
        self.one = torch.nn.Linear(width, width)
        self.qk, self.v = torch.nn.Linear(width, 2 * width), torch.nn.Linear(width, width)
        self.no_bias = torch.nn.Linear(width, width, bias=False)
        self.shared = torch.nn.Linear(width, width)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.reshape(1, -1, image.shape[-1])
        x = x + self.one(self.norms[0](x))
        y = self.norms[1](x)
        x = x + self.qk(y)[..., : x.shape[-1]] * self.v(y)
        x = x + self.no_bias(self.norms[2](x))
        z = self.norms[3](x)
        return (z + self.shared(z)).reshape(image.shape)


def test_layer_norm_scale_and_shift_fold_into_the_linears_that_read_them(tmp_path):
    model = _NormsIntoLinears().eval()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    image = torch.randn(1, 1, 49, 12)
    with layer_norm_form(model, executorch.LAYER_NORM):
        report = executorch.convert(model, image, tmp_path / executorch.ARTIFACT)
        with torch.no_grad():
            expected = model(image).numpy()
    assert report["folded_layer_norm_affines"] == 3  # not the one a residual also reads
    assert report["delegation"]["partitions"] == 1
    actual = executorch.run(tmp_path / executorch.ARTIFACT, image.numpy())
    assert np.abs(actual.reshape(expected.shape) - expected).max() < 1e-5
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())  # the model untouched
