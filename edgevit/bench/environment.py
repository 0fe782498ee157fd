"""What a reader needs to trust a number: which machine, which software."""
from __future__ import annotations

import os
import platform
from importlib import metadata

RUNTIME_PACKAGES = ("torch", "executorch", "ai-edge-litert", "onnxruntime", "coremltools", "edgevit")
# int8 runs faster than fp32 on a CPU only with instructions like these; hosts sold under one name differ in them
INT8_DOT_PRODUCT_FLAGS = {"avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI", "amx_int8": "AMX-INT8",
                          "asimddp": "Arm dotprod", "i8mm": "Arm i8mm"}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(("model name", "Hardware", "Processor")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def int8_dot_product_instructions(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The int8 dot-product instruction sets `cpuinfo` lists (empty where it lists none or is missing)."""
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    present = set(line.split(":", 1)[1].split())
                    return [name for flag, name in INT8_DOT_PRODUCT_FLAGS.items() if flag in present]
    except OSError:
        pass
    return []


def cpu_label() -> str:
    """The CPU's name with its int8 dot-product instructions, for headings of speed tables."""
    int8 = int8_dot_product_instructions()
    return f"{cpu_model()}, {' + '.join(int8) if int8 else 'no int8 dot-product instructions'}"


def package_versions(names=RUNTIME_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def host_environment() -> dict:
    return {"cpu": cpu_model(), "int8_dot_product": int8_dot_product_instructions(), "cores": os.cpu_count(), "os": platform.platform(),
            "python": platform.python_version(), "runtimes": package_versions()}
