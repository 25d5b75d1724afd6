"""Timing helpers shared by evaluation, the device client, the simulator's cost model and benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np


def median_ms(fn: Callable[[], object], repeat: int = 30, warmup: int = 3) -> float:
    """Median wall time of one call of fn, in ms (after warm-up calls)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(samples))


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    """p50 / p95 / p99 of latencies in ms (None each when there are none): every report's latency columns."""
    values = np.asarray(latencies_ms, dtype=float)
    quantiles = (("p50", 50), ("p95", 95), ("p99", 99))
    return {q: (float(np.percentile(values, v)) if len(values) else None) for q, v in quantiles}
