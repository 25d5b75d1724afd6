"""Links in a fleet: a cell's capacity trace, shared by the devices active in it; or, per device,
the analytic model's packet-by-packet link.

A cell carries a Mahimahi trace (its delivery opportunities, one TCP segment each), started at an
offset into it and scaled by ``scale``. Its scheduler gives each of the ``n(t)`` devices active
in it an equal share of what the trace delivers, as a round-robin or proportional-fair scheduler
does for users that all have data to send (a device with nothing to send leaves its share
unused: the model errs on the side of contention). A cell of one device is that device's own
link. On its share, each device's frames go first in, first out.

The share is kept as cumulative bytes on a fine grid, so that a transfer's end is one
``searchsorted`` however long the run: that is what lets a fleet of many cells run in minutes.

``PacketLink`` is the other back-end (``FleetScenario.link = "packet"``): each device its own
``LinkEmulator`` pair, the one the single-device analytic model uses, segment by segment on the
trace's delivery opportunities, with its jitter and loss (a lost segment costs a retransmission
timeout). It is exact where the fluid share is smooth, and slower: for small per-device fleets,
and for checking the fleet model against the analytic one frame for frame.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from splitserve.simulator.analytic import SEGMENT, transfer
from splitserve.simulator.link import LinkConfig, link_pair
from splitserve.simulator.traces import Trace

GRID_S = 0.01  # 10 ms: a 1,500-byte packet at 1.2 Mbit/s


class ShareCurve:
    """Bytes one device of a cell could have sent from time 0 to t, over [0, horizon]."""

    def __init__(self, trace: Trace, offset_s: float, horizon_s: float, scale: float = 1.0,
                 share: Callable[[np.ndarray], np.ndarray] | None = None) -> None:  # fmt: skip
        if scale <= 0:
            raise ValueError(f"cell capacity scale must be > 0, got {scale}")
        self.name = trace.name
        self.offset_s = offset_s
        bins = int(np.ceil(horizon_s / GRID_S)) + 1
        edges_ms = offset_s * 1e3 + np.arange(bins + 1) * GRID_S * 1e3  # trace time of each grid edge
        period = trace.period_ms
        opps = trace.opportunities_ms
        # opportunities before a trace time T (the trace repeats): whole periods plus the part
        cycles = np.floor(edges_ms / period)
        before = cycles * len(opps) + np.searchsorted(opps, edges_ms - cycles * period, side="left")
        per_bin = np.diff(before) * SEGMENT * scale  # TCP payload per opportunity
        if share is not None:
            per_bin = per_bin * share(np.arange(bins) * GRID_S)
        self.cum = np.concatenate([[0.0], np.cumsum(per_bin)])  # bytes by each grid edge
        self.horizon_s = bins * GRID_S
        self.mean_bps = float(self.cum[-1] * 8 / self.horizon_s)

    def at(self, t: float) -> float:
        """Cumulative bytes at time t (linear within a grid step)."""
        x = min(max(t, 0.0), self.horizon_s) / GRID_S
        i = min(int(x), len(self.cum) - 2)
        return float(self.cum[i] + (self.cum[i + 1] - self.cum[i]) * (x - i))

    def finish(self, start: float, nbytes: float) -> float:
        """When ``nbytes`` started at ``start`` are through (inf when the horizon ends first)."""
        target = self.at(start) + nbytes
        i = int(np.searchsorted(self.cum, target, side="left"))
        if i >= len(self.cum):
            return float("inf")
        if i == 0 or nbytes <= 0:
            return start
        lo, hi = self.cum[i - 1], self.cum[i]
        frac = (target - lo) / (hi - lo) if hi > lo else 1.0
        return max(start, (i - 1 + frac) * GRID_S)


class DeviceLink:
    """One device's share of its cell: a FIFO of frames (the TCP stream's send buffer)."""

    def __init__(self, curve: ShareCurve, delay_ms: float) -> None:
        self.curve = curve
        self.delay_s = delay_ms / 1e3
        self.busy_until = 0.0

    def send(self, nbytes: float, at: float) -> float:
        """Arrival time at the server of a message of ``nbytes`` handed to the link at ``at``."""
        start = max(at, self.busy_until)
        done = self.curve.finish(start, nbytes)
        self.busy_until = done
        return done + self.delay_s

    def back(self, at: float) -> float:
        """Arrival time at the device of a result the server sends at ``at`` (results are small: the
        downlink is its delay)."""
        return at + self.delay_s

    def split(self) -> DeviceLink:
        """The link of devices split off an aggregated entity: the same share, the same backlog."""
        twin = DeviceLink(self.curve, self.delay_s * 1e3)
        twin.busy_until = self.busy_until
        return twin


class PacketLink:
    """One device's own link, segment by segment (simulator/link.py), its trace position ``offset_s``
    at time 0; results come back on its downlink."""

    def __init__(self, trace: Trace, offset_s: float, delay_ms: float, jitter_ms: float = 0.0,
                 loss: float = 0.0, seed: int = 0, response_bytes: int = 200) -> None:  # fmt: skip
        up = LinkConfig(trace=trace, delay_ms=delay_ms, jitter_ms=jitter_ms, loss=loss)
        down = LinkConfig(delay_ms=delay_ms, jitter_ms=jitter_ms, loss=loss)
        self.up, self.down = link_pair(up, down, seed, start=-offset_s)
        self.response_bytes = response_bytes

    def send(self, nbytes: float, at: float) -> float:
        return transfer(self.up, int(round(nbytes)), at)

    def back(self, at: float) -> float:
        return transfer(self.down, self.response_bytes, at)

    def split(self) -> PacketLink:
        raise ValueError("a packet link is one device's: packet links run per device, not aggregated")
