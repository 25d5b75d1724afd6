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

    def rotated(self, offset_s: float) -> Trace:
        """The same trace started ``offset_s`` into its period (as a fleet cell's trace starts)."""
        off = int(round(offset_s * 1e3)) % self.period_ms
        opps = np.sort((self.opportunities_ms - off) % self.period_ms)
        return Trace(opps.astype(np.int64), self.period_ms, f"{self.name}@{off / 1e3:g}s")

    def rate_series(self, bin_ms: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """(bin start ms, rate in bits/s) over one period, for plots."""
        bins = np.arange(0, self.period_ms + bin_ms, bin_ms)
        counts, _ = np.histogram(self.opportunities_ms, bins=bins)
        return bins[:-1], counts * MTU * 8 / (bin_ms / 1000)


def link_rate_bps(trace: Trace | None, rate_bps: float | None, t_s: np.ndarray, window_ms: int = 500) -> np.ndarray:
    """The link's capacity at each time (s from the trace's start): a trace's rate over the window
    centred there (it repeats), or the constant rate (NaN when unlimited)."""
    t_s = np.asarray(t_s, dtype=float)
    if trace is None:
        return np.full(t_s.shape, float(rate_bps) if rate_bps else np.nan)
    opps, period = trace.opportunities_ms, trace.period_ms
    start = np.mod(t_s * 1e3 - window_ms / 2, period)
    lo = np.searchsorted(opps, start, side="left")
    hi = np.searchsorted(opps, start + window_ms, side="left")
    wrapped = np.searchsorted(opps, start + window_ms - period, side="left")  # windows that run past the period
    count = hi - lo + np.where(start + window_ms > period, wrapped, 0)
    return count * MTU * 8 / (window_ms / 1000)


def step_trace(steps: Sequence[tuple[float, float]] = ((10, 10e6), (10, 0.5e6), (10, 3e6))) -> Trace:
    """The recovery test: (duration s, rate bits/s) steps, by default 10 s at 10 Mbit/s, 0.5, then 3."""
    trace = make_trace(steps)
    name = "step-" + "-".join(f"{rate / 1e6:g}" for _, rate in steps)
    return Trace(trace.opportunities_ms, trace.period_ms, name)


def parse_step_trace(spec: str) -> Trace:
    """``step:10s@10mbps,10s@0.5mbps,10s@3mbps``: a step trace from (duration @ rate) pairs."""
    from splitserve.simulator.units import parse_rate, parse_time_ms

    body = spec.removeprefix("step:")
    steps = []
    for part in body.split(","):
        duration, sep, rate = part.strip().partition("@")
        if not sep:
            raise ValueError(f"step trace {spec!r}: write each step as DURATION@RATE, e.g. 10s@0.5mbps")
        steps.append((parse_time_ms(duration) / 1e3, parse_rate(rate)))
    return step_trace(steps)


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
