"""Bandwidth and RTT estimates from the device's own frames.

Each result gives one sample: the frame's bytes crossed the link in
``network = (result time - send time) - server time``, of which the round-trip
propagation (RTT) is a part. RTT is the recent minimum of ``network`` (as in
BBR's min-RTT); the rest is transmission, so ``bytes / (network - RTT)`` is a
throughput sample. Samples whose transmission time is too short to measure
(the frame was small next to the link: application-limited) are skipped.

The estimate is RobustMPC's: the harmonic mean of recent samples, discounted by
the worst recent relative prediction error, so a link that has been
surprising is trusted less.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass


@dataclass
class LinkEstimate:
    bandwidth_bps: float | None  # None until there is a usable sample
    rtt_ms: float | None
    samples: int


class BandwidthMonitor:
    def __init__(
        self,
        window: int = 8,
        rtt_window_s: float = 10.0,
        min_transfer_ms: float = 2.0,
        min_transfer_share: float = 0.2,
        clock=time.monotonic,  # type: ignore[no-untyped-def]
    ) -> None:
        self.window = window
        self.rtt_window_s = rtt_window_s
        self.min_transfer_ms = min_transfer_ms
        self.min_transfer_share = min_transfer_share
        self.clock = clock
        self._samples: collections.deque[float] = collections.deque(maxlen=window)
        self._errors: collections.deque[float] = collections.deque(maxlen=window)
        self._rtts: collections.deque[tuple[float, float]] = collections.deque()
        self.skipped = 0

    def rtt_ms(self) -> float | None:
        now = self.clock()
        while self._rtts and now - self._rtts[0][0] > self.rtt_window_s:
            self._rtts.popleft()
        return min(r for _, r in self._rtts) if self._rtts else None

    def add(self, nbytes: int, elapsed_ms: float, server_ms: float) -> float | None:
        """Record one frame; returns the throughput sample (bits/s) it gave, or None if skipped."""
        network_ms = max(elapsed_ms - server_ms, 0.0)
        known = self._harmonic()
        # the RTT sample is the network time less this frame's own transmission, once that can be guessed
        own = nbytes * 8 / known * 1e3 if known else 0.0
        self._rtts.append((self.clock(), max(network_ms - own, 0.0)))
        rtt = self.rtt_ms() or 0.0
        transfer_ms = network_ms - rtt
        if transfer_ms < self.min_transfer_ms or transfer_ms < self.min_transfer_share * network_ms:
            self.skipped += 1  # application-limited: too small to say anything about the link
            return None
        sample = nbytes * 8 / (transfer_ms / 1e3)
        predicted = self._harmonic()
        if predicted is not None:
            self._errors.append(abs(predicted - sample) / sample)
        self._samples.append(sample)
        return sample

    def _harmonic(self) -> float | None:
        if not self._samples:
            return None
        return len(self._samples) / sum(1.0 / s for s in self._samples)

    def estimate(self) -> LinkEstimate:
        mean = self._harmonic()
        if mean is not None and self._errors:
            mean /= 1.0 + max(self._errors)
        return LinkEstimate(mean, self.rtt_ms(), len(self._samples))
