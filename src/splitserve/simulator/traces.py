"""Mahimahi bandwidth traces: one line per 1500-byte delivery opportunity, in ms; the trace repeats.

Real cellular uplink traces (ATT-LTE-driving, TMobile-UMTS-driving, ...) come
from the Mahimahi project; the package ships small generated traces for tests
(``bundled_trace``), and ``make_trace`` writes one from a rate schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MTU = 1500
TRACES = Path(__file__).parent / "traces"


@dataclass(frozen=True)
class Trace:
    """Delivery opportunities in ms within one period; the period repeats forever."""

    opportunities_ms: np.ndarray  # non-decreasing, int64
    period_ms: int
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.opportunities_ms) == 0:
            raise ValueError(f"trace {self.name!r} has no delivery opportunities")
        if self.period_ms <= 0:
            raise ValueError(f"trace {self.name!r} has no duration (its last timestamp must be > 0)")
        if np.any(np.diff(self.opportunities_ms) < 0):
            raise ValueError(f"trace {self.name!r}: timestamps must never decrease")

    @property
    def mean_rate_bps(self) -> float:
        return len(self.opportunities_ms) * MTU * 8 / (self.period_ms / 1000)

    def rate_series(self, bin_ms: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """(bin start ms, rate in bits/s) over one period, for plots."""
        bins = np.arange(0, self.period_ms + bin_ms, bin_ms)
        counts, _ = np.histogram(self.opportunities_ms, bins=bins)
        return bins[:-1], counts * MTU * 8 / (bin_ms / 1000)


def load_trace(path: str | Path) -> Trace:
    path = Path(path)
    if not path.is_file():
        bundled = TRACES / path.name
        if bundled.is_file():
            path = bundled
        else:
            raise FileNotFoundError(f"trace not found: {path}")
    values = []
    for n, line in enumerate(path.read_text().split(), 1):
        try:
            values.append(int(line))
        except ValueError:
            raise ValueError(f"{path}: line {n} is not an integer millisecond timestamp: {line[:40]!r}") from None
    if not values:
        raise ValueError(f"{path}: empty trace")
    arr = np.asarray(values, dtype=np.int64)
    return Trace(arr, int(arr[-1]), path.name)


def make_trace(schedule: Sequence[tuple[float, float]]) -> Trace:
    """A trace from (duration s, rate bits/s) steps, with evenly spaced opportunities."""
    times: list[int] = []
    t0 = 0.0
    for duration, rate in schedule:
        per_ms = rate / (MTU * 8) / 1000  # opportunities per ms
        n = int(duration * 1000 * per_ms)  # floor: never spill into the next step
        if n:
            times.extend(int(t0 * 1000 + (i + 1) / per_ms) for i in range(n))
        t0 += duration
    period = int(round(t0 * 1000))
    if not times or times[-1] < period:
        times.append(period)
    return Trace(np.asarray(times, dtype=np.int64), period, "generated")


def save_trace(trace: Trace, path: str | Path) -> None:
    Path(path).write_text("\n".join(str(int(t)) for t in trace.opportunities_ms) + "\n")


def bundled_traces() -> list[Path]:
    return sorted(TRACES.glob("*.up"))
