"""Core ML target: real coremltools conversions of the small configurations, checked without a Core ML runtime.

On Linux the packages are built, reloaded and inspected (I/O, MIL op census, tensor ranks, weights, metadata);
numerics need macOS, where `run` is exercised instead of the RuntimeUnavailable check.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("coremltools")

from edgevit.converters import RuntimeUnavailable, coreml  # noqa: E402
from edgevit.converters.pixels import PixelInput, to_pixels  # noqa: E402
from edgevit.errors import EdgevitError  # noqa: E402
from edgevit.models import layer_norm_form  # noqa: E402
from edgevit.models.tnt import TNT  # noqa: E402
from helpers import TINY  # noqa: E402

FAMILIES = ("tnt", "t2t_performer", "nest_same", "crossvit")
pytestmark = pytest.mark.filterwarnings("ignore:Function _TORCH_OPS_REGISTRY")  # coremltools' own deprecation
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# MIL ops that mean an unclean graph: gathers (im2col / unfold, fancy indexing), in-graph resizes, control flow.
FORBIDDEN = {"gather", "gather_nd", "gather_along_axis", "scatter", "scatter_nd", "scatter_along_axis",
             "upsample_bilinear", "upsample_nearest_neighbor", "resize", "resize_bilinear",
             "resize_nearest_neighbor", "crop_resize", "sliding_windows", "space_to_batch", "batch_to_space",
             "while_loop", "cond", "non_zero"}


def _example(model):
    torch.manual_seed(0)
    return torch.randn(1, *model.pretrained_cfg["input_size"])


def _convert(model, path: Path, precision: str, **options) -> dict:
    with layer_norm_form(model.eval(), coreml.LAYER_NORM):  # what the pipeline does around convert
        return coreml.convert(model, _example(model), path, precision, **options)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(family, precision) -> (artifact, report), each converted once per module."""
    cache = {}

    def get(family: str, precision: str):
        if (family, precision) not in cache:
            torch.manual_seed(0)
            artifact = tmp_path_factory.mktemp(f"{family}_{precision}") / coreml.ARTIFACT
            cache[family, precision] = artifact, _convert(TINY[family](), artifact, precision)
        return cache[family, precision]

    return get


@pytest.mark.parametrize("precision", coreml.PRECISIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_small_configurations_convert_clean(converted, family, precision):
    artifact, report = converted(family, precision)
    size = TINY[family]().pretrained_cfg["input_size"]
    assert artifact.is_dir() and (artifact / "Manifest.json").is_file()
    assert report["inputs"] == [{"name": "pixel_values", "kind": "tensor", "shape": [1, *size], "dtype": "float32"}]
    assert report["outputs"] == [{"name": "logits", "kind": "tensor", "shape": [1, 10], "dtype": "float32"}]
    assert report["classifier"] is None
    assert report["spec_version"] == 7 and report["minimum_target"] == "iOS16"
    assert report["max_rank"] <= coreml.MAX_RANK, report["rank_histogram"]
    ops = report["ops"]
    assert not FORBIDDEN & set(ops), {op: ops[op] for op in FORBIDDEN & set(ops)}
    assert not report["unclean_ops"] and report["verdict"].startswith("clean")
    # native LayerNorm, softmax attention and GELU all stay single MIL ops
    assert ops.get("layer_norm", 0) >= 2 and ops.get("softmax", 0) >= 1 and ops.get("gelu", 0) >= 1
    assert ops.get("linear", 0) >= 4 and ops.get("matmul", 0) >= 2
    assert report["compute_precision"] == precision
    weights = report["const_bytes_by_dtype"]
    if precision == "fp16":
        island = report["float32_ops"]  # the T2T Performer's own ops only (test_fp16_keeps_the_performer_float32)
        assert bool(island) is (family == "t2t_performer"), island
        assert weights.get("float16", 0) > 0 and (weights.get("float32", 0) > 0) is bool(island), weights
        if not island:
            assert ops.get("cast", 0) == 2, "fp16 models should cast only at the float32 input and output"
    else:
        assert weights.get("float32", 0) > 0 and weights.get("float16", 0) == 0, weights
    assert report["author"] == "edgevit" and type(TINY[family]()).__name__ in report["short_description"]
    meta = report["metadata"]
    assert meta["edgevit.precision"] == precision and meta["edgevit.input"] == "tensor"
    assert meta["com.github.apple.coremltools.source_dialect"] == "TorchExport::ATEN"
    assert report["numerics_run"] is (sys.platform == "darwin")
    assert set(report["seconds"]) == {"export", "convert", "serialize"}
    json.dumps(report)  # the manifest stores it


@pytest.mark.parametrize("family", FAMILIES)
def test_package_reloads_and_fp16_halves_the_weights(converted, family):
    import coremltools as ct

    fp32, fp16 = converted(family, "fp32"), converted(family, "fp16")
    for artifact, report in (fp32, fp16):
        reloaded = coreml.inspect(artifact)
        assert {k: v for k, v in report.items() if k != "seconds"} == reloaded
        spec = ct.models.MLModel(str(artifact), skip_model_load=True).get_spec()
        assert [i.name for i in spec.description.input] == ["pixel_values"]
        assert [o.name for o in spec.description.output] == ["logits"]
    ratio = fp16[1]["weight_bytes"] / fp32[1]["weight_bytes"]
    assert 0.4 < ratio < 0.6, ratio
    assert fp16[1]["ops"].keys() - {"cast"} == fp32[1]["ops"].keys()


def test_fp16_keeps_the_performer_float32(converted):
    """The T2T Performer's own ops (random features, exp, normaliser) compute in float32 inside the fp16 program,
    as in the ONNX fp16 graph: exp(80) is inf in fp16. Every other op and every other family stays fp16."""
    report = converted("t2t_performer", "fp16")[1]
    float32 = report["float32_ops"]  # read back from the saved package
    assert report["ops"]["exp"] >= 2 and float32["exp"] == report["ops"]["exp"]
    assert float32.get("linear", 0) < report["ops"]["linear"]  # the Performer's child Linears are fp16
    assert "layer_norm" not in float32 and "softmax" not in float32
    for family in ("tnt", "nest_same", "crossvit"):
        assert converted(family, "fp16")[1]["float32_ops"] == {}


def test_image_input_and_labels_make_a_vision_classifier(tmp_path):
    model = TINY["t2t_performer"]()
    model.pretrained_cfg.update(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    labels = [f"class {i}" for i in range(10)]
    report = _convert(model, tmp_path / coreml.ARTIFACT, "fp16", image_input=True, labels=labels)
    assert report["inputs"] == [{"name": "pixel_values", "kind": "image", "shape": [1, 3, 32, 32],
                                 "dtype": "uint8", "color": "RGB"}]
    # Core ML's classifier outputs (what VNCoreMLRequest reads), plus the raw logits
    assert [o["name"] for o in report["outputs"]] == ["classLabel", "classLabel_probs", "logits"]
    assert [o["kind"] for o in report["outputs"]] == ["string", "dictionary", "tensor"]
    assert report["outputs"][2]["shape"] == [1, 10]
    assert report["classifier"] == {"labels_output": "classLabel", "probabilities_output": "classLabel_probs",
                                    "labels": labels}
    ops = report["ops"]
    assert ops["classify"] == 1 and not FORBIDDEN & set(ops)
    assert ops.get("batch_norm", 0) + ops.get("mul", 0) >= 1  # the folded mean/std
    assert report["max_rank"] <= coreml.MAX_RANK
    meta = report["metadata"]
    assert meta["edgevit.input"] == "image"
    assert json.loads(meta["edgevit.mean"]) == IMAGENET_MEAN and json.loads(meta["edgevit.std"]) == IMAGENET_STD
    assert meta["com.github.apple.coremltools.source"].startswith("torch==")
    assert report["compute_precision"] == "fp16"


def test_grayscale_image_input_and_deployment_options(tmp_path):
    model = TNT(img_size=32, patch_size=8, in_chans=1, embed_dim=32, inner_dim=4, depth=1, num_heads_outer=2,
                num_heads_inner=1, first_stride=4, num_classes=10)
    model.pretrained_cfg.update(mean=[0.5], std=[0.25])
    report = _convert(model, tmp_path / coreml.ARTIFACT, "fp32", image_input=True, minimum_target="iOS17",
                      compute_units="CPU_AND_NE")
    assert report["spec_version"] == 8 and report["minimum_target"] == "iOS17"
    assert report["metadata"]["edgevit.compute_units"] == "CPU_AND_NE"
    assert report["inputs"] == [{"name": "pixel_values", "kind": "image", "shape": [1, 1, 32, 32],
                                 "dtype": "uint8", "color": "GRAYSCALE"}]
    assert [o["name"] for o in report["outputs"]] == ["logits"] and report["classifier"] is None


def test_folded_normalisation_matches_the_model_on_pixels():
    """The image-input wrapper on 0..255 pixels gives the model's logits on the normalised image."""
    model = TINY["tnt"]().eval()
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (1, 3, 32, 32)).float()
    mean, std = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
    normalised = (pixels / 255 - mean) / std
    assert torch.allclose(to_pixels(normalised, IMAGENET_MEAN, IMAGENET_STD), pixels, atol=1e-3)
    assert np.allclose(to_pixels(normalised.numpy(), IMAGENET_MEAN, IMAGENET_STD), pixels.numpy(), atol=1e-3)
    folded = coreml._Probabilities(PixelInput(model, IMAGENET_MEAN, IMAGENET_STD)).eval()
    with torch.no_grad():
        expected = model(normalised)
        logits, probabilities = folded(pixels)
    assert torch.allclose(logits, expected, atol=1e-5), (logits - expected).abs().max()
    assert torch.allclose(probabilities, torch.softmax(expected, -1), atol=1e-6)


def test_unclean_graph_is_flagged(tmp_path):
    class Gathers(nn.Module):  # fancy indexing: what an im2col unfold lowers to
        def __init__(self):
            super().__init__()
            self.register_buffer("index", torch.tensor([3, 0, 2, 1]))

        def forward(self, x):
            return x.flatten(2)[:, :, self.index].sum(-1)

    report = coreml.convert(Gathers(), torch.rand(1, 3, 2, 2), tmp_path / coreml.ARTIFACT)
    assert FORBIDDEN & set(report["ops"]) and report["unclean_ops"], report["ops"]
    assert report["verdict"].startswith("not clean")


def test_run_needs_macos(converted):
    artifact, report = converted("tnt", "fp16")
    images = _example(TINY["tnt"]()).numpy()
    if sys.platform != "darwin":
        with pytest.raises(RuntimeUnavailable, match="Core ML models run only on macOS"):
            coreml.run(artifact, images)
        assert report["numerics_reason"].startswith("Core ML models run only on macOS")
    else:
        logits = coreml.run(artifact, np.concatenate([images, images]))
        assert logits.shape == (2, 10) and np.isfinite(logits).all()


class _Lgamma(nn.Module):
    """An op coremltools 9.0 has no conversion for (`aten.lgamma`)."""

    def forward(self, x):
        return torch.lgamma(x.abs() + 1).mean(dim=(2, 3))


def test_toolchain_failure_names_the_stage_and_operator(tmp_path):
    artifact = tmp_path / coreml.ARTIFACT
    with pytest.raises(EdgevitError, match=r"Core ML convert failed at operator 'lgamma'"):
        coreml.convert(_Lgamma(), torch.rand(1, 3, 8, 8), artifact)
    assert not artifact.exists()


def test_export_failure_names_the_stage(tmp_path):
    class DataDependent(nn.Module):
        def forward(self, x):
            return x[x > 0].sum().reshape(1, 1) if x.sum() > 0 else x.mean().reshape(1, 1)

    with pytest.raises(EdgevitError, match=r"Core ML export failed"):
        coreml.convert(DataDependent(), torch.rand(1, 3, 8, 8), tmp_path / coreml.ARTIFACT)


@pytest.mark.parametrize("options, message", [
    ({"precision": "int8"}, "precision must be one of fp32, fp16"),
    ({"minimum_target": "iOS99"}, "unknown Core ML deployment target 'iOS99'"),
    ({"minimum_target": "iOS14"}, "too old for an ML Program"),
    ({"compute_units": "GPU"}, "unknown Core ML compute units 'GPU'"),
    ({"labels": ["a", "b"]}, "got 2 labels for a model with 10 classes"),
    ({"labels": "imagenet-1k"}, "labels must be a list of class names"),
    ({"image_input": True}, "needs the model's normalisation"),
])
def test_user_errors_are_explained_before_any_work(tmp_path, options, message):
    model = TINY["tnt"]()
    with pytest.raises(EdgevitError, match=message):
        coreml.convert(model, _example(model), tmp_path / coreml.ARTIFACT, **options)
    with pytest.raises(EdgevitError, match="is a .mlpackage directory"):
        coreml.convert(model, _example(model), tmp_path / "model.mlmodel")


def test_inspect_rejects_what_is_not_a_package(tmp_path):
    with pytest.raises(EdgevitError, match="not a Core ML package"):
        coreml.inspect(tmp_path)


def test_module_constants_and_versions():
    assert coreml.NAME == "coreml" and coreml.ARTIFACT == "model.mlpackage"
    assert coreml.PRECISIONS == ("fp32", "fp16") and coreml.LAYER_NORM == "native"
    assert coreml.RUNS_HERE is (sys.platform == "darwin")
    versions = coreml.toolchain_versions()
    assert versions["coremltools"].startswith("9.")
