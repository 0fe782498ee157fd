"""Small real bundles shared by the bench tests (converted once per session)."""
import pytest

from edgevit.convert import convert

BENCH_VARIANT, BENCH_IMG_SIZE = "t2t_vit_7", 32  # a registered variant, so the eager baseline can be rebuilt


@pytest.fixture(scope="session")
def small_bundles(tmp_path_factory):
    """{target: bundle path} for t2t_vit_7 at 32x32: ExecuTorch, TFLite and ONNX, verified."""
    out = tmp_path_factory.mktemp("bench-bundles")
    outcomes = convert(BENCH_VARIANT, targets=["executorch", "tflite", "onnx"], out=out, img_size=BENCH_IMG_SIZE,
                       verify_samples=2)
    assert all(outcome.status == "ok" for outcome in outcomes), [outcome.error for outcome in outcomes]
    return {outcome.target: outcome.bundle for outcome in outcomes}
