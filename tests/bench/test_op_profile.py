"""The per-operator profile of a .pte reads ExecuTorch's own ETDump of a real run."""
import pytest

from edgevit.bench.op_profile import markdown, profile_bundle
from edgevit.errors import EdgevitError


def test_profile_names_xnnpack_operators_with_their_times(small_bundles):
    kinds, wall_ms = profile_bundle(small_bundles["executorch"], runs=3, threads=1)
    names = [kind.name for kind in kinds]
    assert any(name.startswith("Fully Connected (NC, F32)") for name in names), names
    assert not any(name in ("Method::execute", "DELEGATE_CALL") for name in names)
    assert all(kind.count >= 1 for kind in kinds)
    assert 0 < sum(kind.total_ms for kind in kinds) <= wall_ms * 1.5
    assert [kind.total_ms for kind in kinds] == sorted((kind.total_ms for kind in kinds), reverse=True)
    assert "| Fully Connected (NC, F32) GEMM |" in markdown(kinds, wall_ms, "t2t")


def test_profile_refuses_a_bundle_of_another_runtime(small_bundles):
    with pytest.raises(EdgevitError, match="executorch bundle"):
        profile_bundle(small_bundles["tflite"])
