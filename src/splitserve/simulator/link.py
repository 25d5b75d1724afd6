"""One direction of an emulated challenged link, packet by packet.

A packet waits for the link (FIFO, at a constant rate or at the trace's
delivery opportunities), then travels one-way delay plus jitter. Loss depends
on what is carried:

- datagrams (netns mode: real IP packets) are dropped, and the kernel's TCP
  recovers as it would on a real link;
- a TCP byte stream (the userspace proxy) cannot lose bytes the proxy already
  accepted, so a "lost" segment is delivered one retransmission timeout later
  (``rto_ms``, doubling if the retransmission is lost too), and because the
  stream is in order, everything behind it waits too (head-of-line blocking).
  That is what loss costs a TCP application: time, not bytes.

The droptail queue (``queue_bytes``) drops datagrams that do not fit; for the
proxy it is a cap on bytes accepted and not yet sent, beyond which the proxy
stops reading and TCP flow control pushes back on the sender.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np

from splitserve.simulator.loss import BernoulliLoss, GilbertElliottLoss, LossModel, NoLoss
from splitserve.simulator.traces import MTU, Trace


@dataclass
class LinkConfig:
    rate_bps: float | None = None  # constant rate; None with no trace = unlimited
    trace: Trace | None = None  # Mahimahi delivery opportunities (overrides rate_bps)
    delay_ms: float = 0.0  # one-way propagation delay
    jitter_ms: float = 0.0  # standard deviation of the delay
    loss: float = 0.0  # long-run packet loss rate
    burst: float = 1.0  # mean loss burst in packets: 1 = independent (Bernoulli), more = Gilbert-Elliott
    queue_bytes: int = 0  # droptail queue; 0 = unlimited
    rto_ms: float = 200.0  # stream mode: delay added by a lost segment (Linux's minimum RTO)
    mtu: int = MTU

    def __post_init__(self) -> None:
        if self.rate_bps is not None and self.rate_bps <= 0:
            raise ValueError(f"link rate must be > 0, got {self.rate_bps}")
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("delay and jitter must be >= 0")
        if not 0 <= self.loss < 1:
            raise ValueError(f"loss must be within [0, 1), got {self.loss}")

    def loss_model(self, seed: int) -> LossModel:
        if self.loss == 0:
            return NoLoss()
        if self.burst > 1:
            return GilbertElliottLoss.from_mean(self.loss, self.burst, seed)
        return BernoulliLoss(self.loss, seed)

    def describe(self) -> dict:
        return {
            "rate_bps": self.rate_bps if self.trace is None else None,
            "trace": self.trace.name if self.trace is not None else None,
            "trace_mean_rate_bps": self.trace.mean_rate_bps if self.trace is not None else None,
            "delay_ms": self.delay_ms,
            "jitter_ms": self.jitter_ms,
            "loss": self.loss,
            "loss_burst": self.burst,
            "queue_bytes": self.queue_bytes,
        }


@dataclass
class LinkStats:
    packets: int = 0
    bytes: int = 0
    lost: int = 0  # packets the loss model hit (dropped datagrams, or retransmitted segments)
    dropped_queue: int = 0
    delivered_bytes: int = 0
    delays_ms: list[float] = field(default_factory=list)  # propagation + jitter per packet (sampled)


class LinkEmulator:
    """Times packets through one direction of a link. Times are seconds on one monotonic clock."""

    def __init__(self, cfg: LinkConfig, seed: int = 0, start: float = 0.0) -> None:
        self.cfg = cfg
        self.seed = seed
        self.reset(start)

    def reset(self, start: float) -> None:
        """A fresh link whose clock (trace position 0) is at ``start``; same seed, same random draws."""
        self.start = start
        self.rng = np.random.default_rng(self.seed)
        self.loss = self.cfg.loss_model(self.seed + 1)
        self.stats = LinkStats()
        self._busy_until = start
        self._pending: collections.deque[tuple[float, int]] = collections.deque()  # (departure, size)
        self._last_delivery = start
        self._next_opp: tuple[int, int] | None = None  # (period number, index) of the next unused opportunity

    # -- serialization ----------------------------------------------------
    def _trace_departure(self, earliest: float) -> float:
        trace = self.cfg.trace
        assert trace is not None
        opps, period = trace.opportunities_ms, trace.period_ms
        t_ms = (earliest - self.start) * 1e3
        cycle = int(t_ms // period)
        idx = int(np.searchsorted(opps, t_ms - cycle * period, side="left"))
        if self._next_opp is not None and (cycle, idx) < self._next_opp:
            cycle, idx = self._next_opp
        if idx >= len(opps):
            cycle, idx = cycle + 1, 0
        departure = self.start + (cycle * period + int(opps[idx])) / 1e3
        self._next_opp = (cycle, idx + 1)
        return departure

    def _departure(self, size: int, now: float) -> float:
        earliest = max(now, self._busy_until)
        if self.cfg.trace is not None:
            departure = self._trace_departure(earliest)
        elif self.cfg.rate_bps:
            departure = earliest + size * 8 / self.cfg.rate_bps
        else:
            departure = earliest
        self._busy_until = departure
        return departure

    def backlog_bytes(self, now: float) -> int:
        while self._pending and self._pending[0][0] <= now:
            self._pending.popleft()
        return sum(size for _, size in self._pending)

    def _propagation(self) -> float:
        d = self.cfg.delay_ms
        if self.cfg.jitter_ms:
            j = self.cfg.jitter_ms
            d += float(np.clip(self.rng.normal(0.0, j), -2 * j, 2 * j))
        return max(d, 0.0) / 1e3

    # -- the two carriage modes ---------------------------------------------
    def send_datagram(self, size: int, now: float) -> float | None:
        """Delivery time of one packet, or None if it is lost or does not fit the queue."""
        self.stats.packets += 1
        self.stats.bytes += size
        if self.cfg.queue_bytes and self.backlog_bytes(now) + size > self.cfg.queue_bytes:
            self.stats.dropped_queue += 1
            return None
        departure = self._departure(size, now)
        self._pending.append((departure, size))
        if self.loss.lost():
            self.stats.lost += 1
            return None
        self.stats.delivered_bytes += size
        return departure + self._propagation()

    def send_stream(self, size: int, now: float) -> float:
        """Delivery time of one segment of an in-order byte stream (never lost: late instead)."""
        self.stats.packets += 1
        self.stats.bytes += size
        departure = self._departure(size, now)
        self._pending.append((departure, size))
        propagation = self._propagation()
        if len(self.stats.delays_ms) < 100_000:
            self.stats.delays_ms.append(propagation * 1e3)
        delivery = departure + propagation
        rto = max(self.cfg.rto_ms, 4 * self.cfg.delay_ms) / 1e3
        while self.loss.lost():  # each loss costs a retransmission timeout, doubling
            self.stats.lost += 1
            delivery += rto
            rto *= 2
        delivery = max(delivery, self._last_delivery)  # a byte stream is delivered in order
        self._last_delivery = delivery
        self.stats.delivered_bytes += size
        return delivery


# The downlink draws from seed + this, the uplink from seed itself: the two directions are
# independent, and the analytic model and the emulated runs (proxy, netns) draw the same numbers.
DOWNLINK_SEED_OFFSET = 7


def link_pair(
    uplink: LinkConfig, downlink: LinkConfig, seed: int, start: float
) -> tuple[LinkEmulator, LinkEmulator]:
    """(uplink, downlink) emulators of one link, their clocks starting at ``start``."""
    return LinkEmulator(uplink, seed, start=start), LinkEmulator(downlink, seed + DOWNLINK_SEED_OFFSET, start=start)
