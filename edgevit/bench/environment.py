"""What a reader needs to trust a number: which machine, which software."""
from __future__ import annotations

import os
import platform
from importlib import metadata

RUNTIME_PACKAGES = ("torch", "executorch", "ai-edge-litert", "onnxruntime", "coremltools", "edgevit")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(("model name", "Hardware", "Processor")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions(names=RUNTIME_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def host_environment() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "os": platform.platform(),
            "python": platform.python_version(), "runtimes": package_versions()}
