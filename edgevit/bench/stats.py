"""Latency statistics, computed the same way for every runner so reports compare like with like."""
from __future__ import annotations

import numpy as np

UNSTABLE_CV = 0.10  # ExecuTorch's benchmark tooling scores a run with CV >= 10 % as unstable too


def summarize(samples_ms) -> dict | None:
    """mean, median, p90, p99, min, max, std and coefficient of variation (a fraction) of latencies in ms."""
    samples = np.asarray(list(samples_ms), dtype=np.float64)
    if samples.size == 0:
        return None
    mean = float(samples.mean())
    std = float(samples.std(ddof=1)) if samples.size > 1 else 0.0
    return {"mean": mean, "median": float(np.median(samples)),
            "p90": float(np.percentile(samples, 90)), "p99": float(np.percentile(samples, 99)),
            "min": float(samples.min()), "max": float(samples.max()), "std": std,
            "cv": std / mean if mean > 0 else 0.0}


def is_unstable(latency_ms: dict | None) -> bool:
    return bool(latency_ms) and latency_ms.get("cv") is not None and latency_ms["cv"] > UNSTABLE_CV
