"""Bandwidth and RTT estimates from the device's own frames, with their uncertainty.

What a frame tells about the link
---------------------------------
A result gives ``network = (result time - send time) - server time``, the time
the frame's bytes spent on the link plus the round trip.

- RTT: BBR's windowed min-RTT filter [BBR], extended to two frame sizes. The
  least network time among small frames and among frames twice their size in
  the last 10 s are two points near the lower envelope ``RTT + bytes * 8 /
  rate`` (queueing only adds); the line through them meets zero bytes at the
  RTT. Nothing estimated feeds back into it, so no error can feed on itself.
  RTT and rate separate only across frames of different sizes (widths, probes,
  a session's narrow first frame); frames of one size pin down their sum, which
  is what predicting a frame of that size needs, and the last fit stands.
- The rest is transmission: ``bytes / (network - RTT)`` is a throughput sample.
- A frame too small to take measurable time on the link (application-limited,
  as BBR calls it) is no sample, but it is a *lower bound*: the link moved
  ``bytes`` in less than the smallest time we can resolve, and the estimate
  moves up to the bound at once. A narrowest-width probe on a link that has
  recovered to 10 Mbit/s is such a frame, and it must still lift a collapsed
  estimate. (On a link much faster than its frames need, the estimate is that
  bound, not the link's rate; the policy needs no more.)
- A frame still in flight is an *upper bound*: the link has not moved its bytes
  in the time since it was sent (less RTT and server time). This is how a
  collapse shows within one frame interval, before any late result returns.
  Only frames sent after the latest one answered count: an older one still
  unanswered is not waiting on the link (the stream delivers in order).

The filter
----------
The log of the rate follows a random walk, ``x(t + dt) = x(t) + w``, ``w ~
N(0, q dt)``, and a sample is ``z = x + v``, ``v ~ N(0, R)``: a scalar Kalman
filter [Kalman], the model of the Kalman-filter rate estimators in congestion
control (Google Congestion Control's arrival-time filter [GCC]), here in the log
domain because link rates vary over orders of magnitude.

- The variance ``P`` grows with the time since the last sample. After a quiet
  spell (frames run locally, an outage) the next sample carries almost all the
  weight, so the estimate jumps to what a probe measured instead of averaging
  it with samples from before the collapse (the harmonic mean of the last 8
  samples that this replaces needed ~8 probes, over 8 s, to recover).
- ``R``, the link's own variability at frame time scale, is learned from the
  innovations (their running mean square, less ``P``; an innovation is clipped
  and counted after its own update, so a step is followed, not discounted).
- Drops are believed faster than rises: a sample below the estimate is
  weighted as if its noise were ``R / drop_trust``. Overshooting a drop costs a
  missed deadline per frame; undershooting a rise costs some accuracy.

What it reports: the median rate ``exp(x)``, the predictive log standard
deviation ``sigma = sqrt(P + R)`` for the next frame, the RTT, and the bytes
still queued ahead of the next frame. The policy plans with the rate's lower
quantiles, as RobustMPC [RobustMPC] plans with a throughput prediction
discounted by its recent error; here the discount is the filter's own
predictive uncertainty, which also widens when no sample has come for a while.

References:
[BBR] Cardwell et al., "BBR: Congestion-Based Congestion Control", ACM Queue 14(5), 2016.
[Kalman] R. E. Kalman, "A New Approach to Linear Filtering and Prediction Problems", 1960.
[GCC] Carlucci et al., "Analysis and Design of the Google Congestion Control for WebRTC", MMSys 2016.
[RobustMPC] Yin et al., "A Control-Theoretic Approach for Dynamic Adaptive Video Streaming over
HTTP", SIGCOMM 2015.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class LinkEstimate:
    bandwidth_bps: float | None  # median rate; None until there is a usable sample
    rtt_ms: float | None
    samples: int
    sigma: float = 0.0  # predictive standard deviation of log(rate) for the next frame
    backlog_bytes: float = 0.0  # bytes of frames in flight still queued ahead of the next frame

    def rate_quantile(self, z: float) -> float | None:
        """The rate ``z`` standard deviations above the median (z < 0: a pessimistic rate)."""
        if self.bandwidth_bps is None:
            return None
        return self.bandwidth_bps * math.exp(z * self.sigma)


class BandwidthMonitor:
    """Link rate and RTT from the frames' own round trips (see the module docstring for the model)."""

    def __init__(
        self,
        rtt_window_s: float = 10.0,
        fit_recent_s: float = 1.0,
        min_transfer_ms: float = 2.0,
        min_transfer_share: float = 0.1,
        q_per_s: float = 0.3,
        r_init: float = 0.1,
        r_min: float = 0.01,
        r_max: float = 0.5,
        drop_trust: float = 4.0,
        innovation_alpha: float = 0.1,
        innovation_clip: float = 1.5,
        clock=time.monotonic,  # type: ignore[no-untyped-def]
    ) -> None:
        self.rtt_window_s = rtt_window_s
        self.fit_recent_s = fit_recent_s  # frames this close in time saw about the same rate
        self.min_transfer_ms = min_transfer_ms
        self.min_transfer_share = min_transfer_share
        self.q_per_s = q_per_s  # random-walk variance of log(rate) per second
        self.r_min = r_min
        self.r_max = r_max  # an outage's wild samples must not leave the filter deaf for long after
        self.drop_trust = drop_trust
        self.innovation_alpha = innovation_alpha
        self.innovation_clip = innovation_clip  # one outlier may raise R only so much
        self.clock = clock
        self._x: float | None = None  # log(rate in bits/s)
        self._p = 0.0  # variance of _x
        self._r = r_init  # sample noise variance (learned)
        self._innovation_sq = r_init
        self._t: float | None = None  # time of the last update
        self._rtts: collections.deque[tuple[float, int, float]] = collections.deque()  # time, bytes, network ms
        # The window's least network time and its least and largest frame, as monotonic queues of
        # (sequence number, value), so that each costs O(1) per frame (the fleet simulator runs
        # this code for every frame of every device).
        self._seq = 0  # sequence number of the next entry
        self._first = 0  # sequence number of _rtts[0]
        self._least_n: collections.deque[tuple[int, float]] = collections.deque()
        self._least_b: collections.deque[tuple[int, int]] = collections.deque()
        self._most_b: collections.deque[tuple[int, int]] = collections.deque()
        self._rtt_fit: float | None = None
        self._server_ms = 0.0
        self._answered_sent = -math.inf  # send time of the latest-sent frame whose result came back
        self.samples = 0
        self.skipped = 0

    # -- RTT ---------------------------------------------------------------
    def rtt_ms(self) -> float | None:
        """The network time a frame of no size would take: the intercept of the window's lower envelope.

        ``network = RTT + bytes * 8 / rate`` plus queueing, which is never negative. The least network
        time among small frames and among frames at least twice their size give two points near the
        envelope; the line through them meets zero bytes at the RTT. This uses nothing but what was
        measured (no estimate feeds back into it, so no error can feed on itself). A fit from the last
        ``fit_recent_s`` replaces the RTT; one from the whole window (points that may have seen
        different rates) may only lower it. Without frames of two sizes, the last fit stands (never
        above the least network time seen).
        """
        now = self.clock()
        while self._rtts and now - self._rtts[0][0] > self.rtt_window_s:
            self._rtts.popleft()
            self._first += 1
        for queue in (self._least_n, self._least_b, self._most_b):
            while queue and queue[0][0] < self._first:
                queue.popleft()
        if not self._rtts:
            return self._rtt_fit
        raw = self._least_n[0][1]
        recent = []  # the entries of the last fit_recent_s: a suffix, as entries come in time order
        for e in reversed(self._rtts):
            if now - e[0] > self.fit_recent_s:
                break
            recent.append(e)
        recent.reverse()
        fit = self._fit(recent)
        if fit is not None:
            self._rtt_fit = fit
        else:
            # points seconds apart may have seen different rates: such a fit may only lower the RTT.
            # No frame twice the smallest's size in the window: no fit (what _fit would find, cheaply).
            two_sizes = self._most_b[0][1] >= 2 * self._least_b[0][1]
            fit = self._fit(self._rtts) if two_sizes else None
            if fit is not None and (self._rtt_fit is None or fit < self._rtt_fit):
                self._rtt_fit = fit
        return raw if self._rtt_fit is None else min(self._rtt_fit, raw)

    @staticmethod
    def _fit(entries) -> float | None:  # type: ignore[no-untyped-def]
        if not entries:
            return None
        smallest = min(b for _, b, _ in entries)
        large = [(b, n) for _, b, n in entries if b >= 2 * smallest]
        if not large:
            return None
        b_s, n_s = min(((b, n) for _, b, n in entries if b <= 1.25 * smallest), key=lambda e: e[1])
        b_l, n_l = min(large, key=lambda e: e[1])
        slope = (n_l - n_s) / (b_l - b_s)
        return max(n_s - max(slope, 0.0) * b_s, 0.5 * n_s)

    # -- the filter --------------------------------------------------------
    def _variance_now(self) -> float:
        if self._t is None:
            return self._p
        return self._p + self.q_per_s * max(self.clock() - self._t, 0.0)

    def _update(self, z: float) -> None:
        if self._x is None or not self.samples:  # the first sample; bounds before it are no prior
            self._x, self._p, self._t = z, self._r, self.clock()
            return
        p = self._variance_now()
        innovation = z - self._x
        r = self._r / self.drop_trust if innovation < 0 else self._r
        gain = p / (p + r)
        self._x += gain * innovation
        self._p = (1.0 - gain) * p
        self._t = self.clock()
        # after the update: a step of the link is news, not noise to discount it by
        a = self.innovation_alpha
        self._innovation_sq += a * (min(innovation**2, self.innovation_clip**2) - self._innovation_sq)
        self._r = min(max(self.r_min, self._innovation_sq - p), self.r_max)

    # -- observations ------------------------------------------------------
    def add(self, nbytes: int, elapsed_ms: float, server_ms: float) -> float | None:
        """Record one frame's round trip; returns its throughput sample (bits/s), or None if it gave none."""
        first = not (self.samples or self.skipped)
        self._server_ms = server_ms if first else self._server_ms + 0.2 * (server_ms - self._server_ms)
        network_ms = max(elapsed_ms - server_ms, 0.0)
        self._answered_sent = max(self._answered_sent, self.clock() - elapsed_ms / 1e3)
        self._rtts.append((self.clock(), nbytes, network_ms))
        seq, self._seq = self._seq, self._seq + 1
        for queue, value, keep in ((self._least_n, network_ms, lambda old: old < network_ms),
                                   (self._least_b, nbytes, lambda old: old < nbytes),
                                   (self._most_b, nbytes, lambda old: old > nbytes)):  # fmt: skip
            while queue and not keep(queue[-1][1]):
                queue.pop()
            queue.append((seq, value))
        rtt = self.rtt_ms() or 0.0
        transfer_ms = network_ms - rtt
        resolvable_ms = max(self.min_transfer_ms, self.min_transfer_share * network_ms)
        if transfer_ms < resolvable_ms:
            # application-limited: no sample, but the link moved nbytes in under resolvable_ms
            self.skipped += 1
            floor = math.log(nbytes * 8 / (resolvable_ms / 1e3))
            if self._x is None:
                self._x, self._p, self._t = floor, self._r, self.clock()
            elif self._x < floor:  # a bound, not a noisy sample: the estimate moves up to it at once
                self._p, self._t = self._variance_now(), self.clock()
                self._x = floor
            return None
        sample = nbytes * 8 / (transfer_ms / 1e3)
        self._update(math.log(sample))
        self.samples += 1
        return sample

    def estimate(self, pending: Iterable[tuple[int, float]] = ()) -> LinkEstimate:
        """The link now. ``pending``: (bytes, send time on this monitor's clock) of frames still in flight."""
        rtt = self.rtt_ms()
        if self._x is None:
            return LinkEstimate(None, rtt, self.samples)
        rate = math.exp(self._x)
        sigma = math.sqrt(self._variance_now() + self._r)
        now = self.clock()
        # A frame sent before one whose result is back is not waiting on the link (a stream delivers in
        # order): its answer was lost or the server holds it. It says nothing about the rate.
        inflight = sorted((p for p in pending if p[1] > self._answered_sent), key=lambda p: p[1])
        backlog = 0.0
        if inflight:
            oldest_bytes, oldest_sent = inflight[0]
            waited_ms = (now - oldest_sent) * 1e3 - (rtt or 0.0) - self._server_ms
            if waited_ms > self.min_transfer_ms:
                # its result is not back: the link has not moved its bytes in waited_ms
                rate = min(rate, oldest_bytes * 8 / (waited_ms / 1e3))
            total = sum(b for b, _ in inflight)
            backlog = max(0.0, total - rate * max(now - oldest_sent, 0.0) / 8)
        return LinkEstimate(rate, rtt, self.samples, sigma, backlog)
