"""TFLite / LiteRT target: real litert-torch conversions of small configurations, run in the LiteRT interpreter.

Each family is converted once per (precision, layout) and the artifacts are shared between tests (module-scoped
cache); a TINY conversion takes 5-15 s on two cores.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

import edgevit.models as models  # noqa: E402
from edgevit.converters import tflite  # noqa: E402
from edgevit.errors import EdgevitError  # noqa: E402

from helpers import TINY  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")  # torch.export inside litert-torch
FAMILIES = ["tnt", "t2t_performer", "nest_same", "crossvit"]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return min(float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y))) for x, y in zip(a, b))


class Converted:
    """Model, images, eager logits, and the artifacts converted so far for one family."""

    def __init__(self, family: str, root: Path) -> None:
        torch.manual_seed(0)
        self.model = TINY[family]().eval()
        self.root = root / family
        self.root.mkdir()
        self.images = torch.randn(3, *self.model.pretrained_cfg["input_size"])
        with torch.no_grad(), models.layer_norm_form(self.model, tflite.LAYER_NORM):
            self.eager = self.model(self.images).numpy()
        self.reports: dict = {}

    def artifact(self, precision: str = "fp32", nhwc: bool = False) -> tuple[Path, dict]:
        path = self.root / f"{precision}_{'nhwc' if nhwc else 'nchw'}_{tflite.ARTIFACT}"
        if path not in self.reports:
            with models.layer_norm_form(self.model, tflite.LAYER_NORM):  # as the pipeline calls it
                self.reports[path] = tflite.convert(self.model, self.images[:1], path, precision=precision, nhwc=nhwc)
        return path, self.reports[path]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root, cache = tmp_path_factory.mktemp("tflite"), {}

    def get(family: str) -> Converted:
        if family not in cache:
            cache[family] = Converted(family, root)
        return cache[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_matches_eager_with_builtin_ops_only(converted, family):
    case = converted(family)
    path, report = case.artifact("fp32")
    logits = tflite.run(path, case.images.numpy())
    assert logits.shape == case.eager.shape
    error = np.abs(logits - case.eager).max()
    assert error <= 1e-4 and cosine(logits, case.eager) >= 0.9999, f"{family}: max |diff| {error:.2e}"
    assert report["flex_ops"] == [] and report["custom_ops"] == [] and report["runtime_error"] is None
    assert not any(":" in op or op.startswith("STABLEHLO_") for op in report["ops"]), report["ops"]
    # static batch-1 NCHW float I/O, as run() and the apps expect
    assert report["inputs"] == [{"name": report["inputs"][0]["name"], "shape": [1, *case.images.shape[1:]],
                                 "dtype": "float32", "layout": "NCHW", "quantization": None}]
    assert report["outputs"][0]["shape"] == [1, case.eager.shape[1]] and report["outputs"][0]["dtype"] == "float32"
    # converted in the declared LayerNorm form: litert decomposes the native op (one SQUARED_DIFFERENCE per norm)
    assert report["layer_norm"] == tflite.LAYER_NORM
    norms = sum(isinstance(m, models.LayerNorm) for m in case.model.modules())
    assert report["ops"].get("SQUARED_DIFFERENCE", 0) == (norms if tflite.LAYER_NORM == "native" else 0)
    assert report["size_bytes"] == path.stat().st_size and report["constant_bytes"].get("float16") is None
    json.dumps(report)


def test_symmetric_nest_pool_stays_in_xnnpack(converted):
    # timm's symmetric -inf padding became a PADV2 XNNPACK leaves out; the replicated edges keep it whole
    _, report = converted("nest_symmetric").artifact("fp32")
    assert report["fully_accelerated"] is True and "PADV2" not in report["ops"] and "PAD" not in report["ops"]


# T2T-ViT-t's single-head token attention is where LiteRT made a FULLY_CONNECTED with activation weights
@pytest.mark.parametrize("family", FAMILIES + ["t2t_transformer"])
def test_fp32_is_one_xnnpack_partition(converted, family):
    _, report = converted(family).artifact("fp32")
    assert report["xnnpack"]["method"].startswith("CompiledModel")
    assert report["xnnpack"]["partitions"] == 1 and report["xnnpack"]["not_delegated"] == {}, report["xnnpack"]
    assert report["fully_accelerated"] is True


@pytest.mark.parametrize("family", FAMILIES)
def test_fp16_weights_are_smaller_and_close(converted, family):
    case = converted(family)
    fp32_path, fp32 = case.artifact("fp32")
    path, report = case.artifact("fp16")
    logits = tflite.run(path, case.images.numpy())
    assert cosine(logits, case.eager) >= 0.999, f"{family}: max |diff| {np.abs(logits - case.eager).max():.2e}"
    assert not np.array_equal(logits, tflite.run(fp32_path, case.images.numpy()))  # the weights really changed
    assert report["size_bytes"] < 0.8 * fp32["size_bytes"] and report["fp32_size_bytes"] == fp32["size_bytes"]
    # at least three quarters of the fp32 weight bytes are now fp16 (position embeddings stay fp32: they feed ADD)
    assert 2 * report["constant_bytes"]["float16"] >= 0.75 * fp32["constant_bytes"]["float32"], report["constant_bytes"]
    assert report["inputs"][0]["dtype"] == "float32" and report["outputs"][0]["dtype"] == "float32"
    assert report["ops"]["DEQUANTIZE"] > 0 and report["flex_ops"] == [] and report["custom_ops"] == []
    # XNNPACK takes the fp16 weights: the partitioning is the fp32 one
    assert report["xnnpack"]["partitions"] == fp32["xnnpack"]["partitions"]
    assert report["fully_accelerated"] == fp32["fully_accelerated"]


@pytest.mark.parametrize("family", FAMILIES)
def test_nhwc_input_gives_the_same_logits(converted, family):
    case = converted(family)
    path, report = case.artifact("fp32", nhwc=True)
    channels, height, width = case.images.shape[1:]
    assert report["layout"] == "NHWC" and report["inputs"][0]["shape"] == [1, height, width, channels]
    # run() takes NCHW and transposes for an NHWC model; check against the raw interpreter fed NHWC by hand too
    logits = tflite.run(path, case.images.numpy())
    np.testing.assert_allclose(logits, case.eager, atol=1e-4)
    interpreter = tflite._interpreter(path)
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.set_tensor(source["index"], np.ascontiguousarray(case.images[:1].permute(0, 2, 3, 1).numpy()))
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(target["index"]), logits[:1], atol=1e-5)
    assert report["num_ops"] <= converted(family).artifact("fp32")[1]["num_ops"] + 2  # at most the input transpose
    assert report["flex_ops"] == [] and report["custom_ops"] == []


def test_uint8_input_takes_camera_pixels_with_the_normalisation_inside(tmp_path):
    from edgevit.convert import convert
    from edgevit.converters.bundle import read_bundle
    from edgevit.converters.pixels import as_8bit, to_pixels

    torch.manual_seed(0)
    model = TINY["t2t_performer"]().eval()
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": mean, "std": std}
    [outcome] = convert(model, ["tflite"], out=tmp_path, target_options={"tflite": {"uint8_input": True, "nhwc": True}})
    assert outcome.status == "ok", outcome.error
    bundle = read_bundle(outcome.bundle)
    assert bundle.manifest["input"]["dtype"] == "uint8" and bundle.manifest["input"]["layout"] == "NHWC"
    assert outcome.verification["metrics"]["cosine_min"] > 0.9999  # against eager on the same 8-bit pixels
    # one partition; only the uint8 -> float CAST runs outside XNNPACK (which has no such cast)
    assert outcome.report["xnnpack"]["partitions"] == 1, outcome.report["xnnpack"]
    assert outcome.report["xnnpack"]["not_delegated"] == {"CAST": 1}, outcome.report["xnnpack"]

    images = torch.randn(2, 3, 32, 32).clamp(-2, 2).numpy()
    with torch.no_grad():
        reference = model(torch.from_numpy(as_8bit(images, mean, std))).numpy()
    np.testing.assert_allclose(tflite.run(bundle.artifact, images), reference, atol=1e-4)  # normalised in
    interpreter = tflite._interpreter(bundle.artifact)  # what an app does: raw NHWC pixels in
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert source["dtype"] == np.uint8 and tuple(source["shape"]) == (1, 32, 32, 3)
    pixels = np.rint(to_pixels(images[:1], mean, std)).astype(np.uint8).transpose(0, 2, 3, 1)
    interpreter.set_tensor(source["index"], np.ascontiguousarray(pixels))
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(target["index"]), reference[:1], atol=1e-4)

    no_normalisation = TINY["tnt"]().eval()
    with pytest.raises(EdgevitError, match="uint8_input=True needs the model's normalisation"):
        tflite.convert(no_normalisation, torch.zeros(1, 3, 32, 32), tmp_path / "x.tflite", uint8_input=True)


def test_run_rejects_images_of_the_wrong_size(converted):
    path, _ = converted("tnt").artifact("fp32")
    with pytest.raises(EdgevitError, match=r"takes NCHW images of shape \(N, 3, 32, 32\)"):
        tflite.run(path, np.zeros((1, 3, 40, 40), np.float32))


def test_user_errors_are_explained(tmp_path):
    model = TINY["tnt"]().eval()
    with pytest.raises(EdgevitError, match="no precision 'int3'.*fp32, fp16"):
        tflite.convert(model, torch.randn(1, 3, 32, 32), tmp_path / "m.tflite", precision="int3")
    with pytest.raises(EdgevitError, match=r"static batch-1.*got \(2, 3, 32, 32\)"):
        tflite.convert(model, torch.randn(2, 3, 32, 32), tmp_path / "m.tflite")
    with pytest.raises(EdgevitError, match="does not exist"):
        tflite.inspect(tmp_path / "missing.tflite")


class DataDependent(torch.nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


class Sorts(torch.nn.Module):
    def forward(self, x):
        return torch.sort(x.flatten(1), dim=-1).values


def test_export_failure_names_the_stage(tmp_path):
    with pytest.raises(EdgevitError, match="failed in the export stage"):
        tflite.convert(DataDependent(), torch.randn(1, 3, 8, 8), tmp_path / "m.tflite")


def test_op_without_a_litert_kernel_is_rejected(tmp_path):
    # torch.sort lowers to the STABLEHLO_SORT builtin, which the LiteRT CPU runtime cannot load
    with pytest.raises(EdgevitError, match="STABLEHLO_SORT"):
        tflite.convert(Sorts(), torch.randn(1, 3, 8, 8), tmp_path / "m.tflite")


def _custom_op_module():
    """A module whose one op litert-torch lowers to `tfl.custom` (how litert's own custom ops are emitted)."""
    from litert_converter.mlir import ir
    from litert_torch.backend import lowerings
    from litert_torch.backend.lowerings import utils as lowering_utils

    if not hasattr(torch.ops.edgevit_test, "double"):
        @torch.library.custom_op("edgevit_test::double", mutates_args=())
        def double(x: torch.Tensor) -> torch.Tensor:
            return x * 2

        @double.register_fake
        def _(x):
            return torch.empty_like(x)

        @lowerings.lower(torch.ops.edgevit_test.double)
        def _lower(lctx, x):
            return ir.Operation.create("tfl.custom", results=lowering_utils.node_meta_to_ir_types(lctx.node),
                                       operands=[x], attributes={
                                           "custom_code": ir.StringAttr.get("EdgevitDouble"),
                                           "custom_option": ir.Attribute.parse('#tfl<const_bytes: "0x">')}).results[0]

    class Custom(torch.nn.Module):
        def forward(self, x):
            return torch.ops.edgevit_test.double(x) + 1

    return Custom()


def test_custom_ops_are_rejected(tmp_path):
    try:
        module = _custom_op_module()
    except ImportError as exc:  # litert-torch internals moved: the check itself is still covered by inspect
        pytest.skip(f"cannot build a tfl.custom lowering here: {exc}")
    path = tmp_path / "m.tflite"
    with pytest.raises(EdgevitError, match="custom op EdgevitDouble"):
        tflite.convert(module, torch.randn(1, 3, 8, 8), path)
    report = tflite.inspect(path)  # the artifact is left for debugging; inspect still describes it
    assert report["custom_ops"] == ["EdgevitDouble"] and report["ops"]["CUSTOM:EdgevitDouble"] == 1
    assert report["fully_accelerated"] is False and "EdgevitDouble" in report["runtime_error"]


def test_toolchain_versions():
    versions = tflite.toolchain_versions()
    assert versions["litert-torch"] and versions["ai-edge-litert"] and versions["ai-edge-quantizer"]
