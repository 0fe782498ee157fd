"""The CPU label of speed tables: hosts sold under one name differ in the instructions int8 needs."""
from edgevit.bench.environment import cpu_label, cpu_model, int8_dot_product_instructions


def test_x86_flags_name_vnni(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: AMD EPYC\nflags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16\n")
    assert int8_dot_product_instructions(str(cpuinfo)) == ["AVX-512 VNNI"]


def test_arm_features_name_dotprod(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\n")
    assert int8_dot_product_instructions(str(cpuinfo)) == ["Arm dotprod", "Arm i8mm"]


def test_avx2_only_host_has_none(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse avx2 fma\n")
    assert int8_dot_product_instructions(str(cpuinfo)) == []
    assert int8_dot_product_instructions(str(tmp_path / "missing")) == []


def test_label_starts_with_the_model_name():
    label = cpu_label()
    assert label.startswith(cpu_model() + ", ") and len(label) > len(cpu_model()) + 2
