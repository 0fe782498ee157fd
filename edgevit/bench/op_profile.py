"""Where a .pte spends its time: ExecuTorch's own per-operator profile (ETDump), summed by XNNPACK operator kind.

The whole-model latency says whether int8 paid off; this says why not. Each XNNPACK operator inside the delegate
is an ETDump event named like "Fully Connected (NC, QS8, QC8W) GEMM #12": the kind before the '#' tells an int8
GEMM from a float one, so the float islands' share of the time is visible at a glance.
"""
from __future__ import annotations

import re
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevit.errors import EdgevitError

# ETDump's own wrappers around the operators: they would count every operator's time twice
WRAPPER_EVENTS = ("Method::execute", "DELEGATE_CALL", "OPERATOR_CALL")


@dataclass
class OpKind:
    name: str  # XNNPACK's operator name with its datatypes, e.g. "Softmax (NC, F32)"
    count: int  # operators of this kind in one inference
    total_ms: float  # their median times (over the runs), summed


def profile_bundle(bundle_dir: Path | str, runs: int = 10, threads: int = 1, warmup: int = 3) -> tuple[list[OpKind], float]:
    """Per-kind operator times of one inference of an ExecuTorch bundle (its directory or its model.pte) on a
    random input of the manifest's shape, slowest kind first, and the profiled inference's median wall time in ms
    (profiling adds a little)."""
    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings.portable_lib import _load_for_executorch, _unsafe_reset_threadpool

    from edgevit.converters.bundle import read_bundle

    bundle_dir = Path(bundle_dir)
    bundle = read_bundle(bundle_dir.parent if bundle_dir.suffix == ".pte" else bundle_dir)
    if bundle.target != "executorch":
        raise EdgevitError(f"{bundle.path} is a {bundle.target} bundle; the operator profile reads ExecuTorch's "
                           "ETDump, so pass an executorch bundle (`edgevit convert MODEL --target executorch`).")
    _unsafe_reset_threadpool(threads)
    module = _load_for_executorch(str(bundle.artifact), enable_etdump=True, debug_buffer_size=0)
    shape = bundle.manifest["input"]["shape"]
    image = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    walls = []
    for index in range(warmup + runs):
        start = time.perf_counter()
        module.forward([image])
        if index >= warmup:
            walls.append((time.perf_counter() - start) * 1e3)
    with tempfile.TemporaryDirectory() as scratch:
        etdump = Path(scratch) / "profile.etdp"
        module.write_etdump_result_to_file(str(etdump))
        inspector = Inspector(etdump_path=str(etdump))
    kinds: dict[str, list[float]] = defaultdict(list)
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            if event.perf_data is None or event.name in WRAPPER_EVENTS:
                continue
            # the runs' median of each operator: warm-up runs are in the raw data too, and slower
            kinds[re.sub(r"\s*#\d+$", "", event.name)].append(statistics.median(event.perf_data.raw[-runs:]))
    ranked = sorted((OpKind(name, len(times), sum(times)) for name, times in kinds.items()),
                    key=lambda kind: -kind.total_ms)
    return ranked, statistics.median(walls)


def markdown(kinds: list[OpKind], wall_ms: float, title: str) -> str:
    total = sum(kind.total_ms for kind in kinds) or 1.0
    lines = [f"## {title}", "", f"Profiled inference: {wall_ms:.2f} ms (median); operators sum to {total:.2f} ms.", "",
             "| operator (XNNPACK) | count | ms | share |", "|---|---|---|---|"]
    lines += [f"| {kind.name} | {kind.count} | {kind.total_ms:.3f} | {kind.total_ms / total:.1%} |" for kind in kinds]
    return "\n".join(lines)
