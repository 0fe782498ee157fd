"""The conversion pipeline end to end: real toolchains and runtimes on a small model, bundles on disk."""
import json

import pytest
import torch

from edgevit import verify
from edgevit.convert import convert
from edgevit.converters.bundle import read_bundle
from edgevit.errors import EdgevitError
from helpers import TINY

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def all_targets(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles")
    torch.manual_seed(0)
    messages = []
    outcomes = convert(TINY["tnt"](), targets="all", out=out, log=messages.append)
    return out, outcomes, messages


def test_every_target_gets_a_verified_bundle(all_targets):
    out, outcomes, messages = all_targets
    by_target = {o.target: o for o in outcomes}
    assert set(by_target) == {"executorch", "coreml", "tflite", "onnx"}
    assert all(o.status == "ok" for o in outcomes), [(o.target, o.error) for o in outcomes]
    for name in ("executorch", "tflite", "onnx"):
        metrics = by_target[name].verification["metrics"]
        assert by_target[name].verification["status"] == "passed"
        assert metrics["cosine_min"] >= 0.9999 and metrics["top1_agreement"] == 1.0
    coreml = by_target["coreml"]
    assert coreml.precision == "fp16"  # Core ML defaults to the Neural Engine's precision
    assert coreml.verification["status"] in ("not run", "passed")  # "passed" on macOS
    assert any("RANDOMLY INITIALISED" in m for m in messages)
    assert not [p for p in out.rglob("*") if ".staging-" in p.name]  # nothing half-written left


def test_manifest_describes_the_bundle(all_targets):
    out, outcomes, _ = all_targets
    bundle = read_bundle(outcomes[0].bundle)
    manifest = bundle.manifest
    assert manifest["status"] == "ok" and manifest["target"] == "executorch"
    assert manifest["weights"]["random_init"] is True
    assert manifest["input"]["shape"] == [1, 3, 32, 32] and manifest["input"]["layout"] == "NCHW"
    assert manifest["report"]["delegation"]["partitions"] == 1
    assert manifest["artifact"]["size_bytes"] == bundle.artifact.stat().st_size
    assert "executorch" in manifest["toolchain"] and "torch" in manifest["toolchain"]
    assert manifest["verification"]["inputs"]


def test_existing_bundle_is_kept_unless_forced(all_targets):
    out, outcomes, _ = all_targets
    onnx = next(o for o in outcomes if o.target == "onnx")
    before = (onnx.bundle / "manifest.json").read_text()
    with pytest.raises(EdgevitError, match="already exists; pass --force"):
        convert(TINY["tnt"](), targets="onnx", out=out)
    assert (onnx.bundle / "manifest.json").read_text() == before
    redo = convert(TINY["tnt"](), targets="onnx", out=out, force=True)
    assert redo[0].status == "ok" and json.loads((onnx.bundle / "manifest.json").read_text())["created"]


def test_failed_verification_leaves_no_bundle_or_a_marked_one(tmp_path, monkeypatch):
    monkeypatch.setitem(verify.BUDGETS, "fp32", (1.01, 1.0))  # a budget no artifact can meet
    outcome = convert(TINY["tnt"](), targets="onnx", out=tmp_path)[0]
    assert outcome.status == "failed" and "cosine similarity" in outcome.error
    assert not (tmp_path / "tnt" / "onnx-fp32").exists()
    kept = convert(TINY["tnt"](), targets="onnx", out=tmp_path, keep_failed=True)[0]
    failed_dir = tmp_path / "tnt" / "onnx-fp32.failed"
    assert kept.status == "failed" and json.loads((failed_dir / "manifest.json").read_text())["status"] == "failed"


def test_bad_requests_fail_before_any_work(tmp_path):
    with pytest.raises(EdgevitError, match="unknown target 'tensorrt'"):
        convert(TINY["tnt"](), targets="tensorrt", out=tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(EdgevitError, match="cannot write bundles under"):
        convert(TINY["tnt"](), targets="onnx", out=blocker / "sub")
    with pytest.raises(EdgevitError, match="executorch supports precision fp32, not fp16"):
        convert(TINY["tnt"](), targets="executorch", out=tmp_path, precision="fp16")
