"""The analytic model: every frame's latency from measured costs and the link model, with no processes.

A discrete-event model in virtual time, fast enough for wide sweeps and long traces:

    capture -> device compute (frames queue on the device CPU) -> uplink (FIFO
    at the link rate or trace, delay, jitter, loss as retransmission delay)
    -> server compute -> downlink -> result

The decisions are the device client's own: the same ``FramePlanner`` (bandwidth
monitor + width policy) is asked for each frame at its capture time, sees the
frames still in flight then, and hears of each result only at the virtual time
it arrives, as the client would. A local frame that the policy marks as a probe
also sends a narrowest-width frame, whose result feeds the monitor only. It is
validated against the emulated runs (tests/test_simulator.py,
benchmarks/link_fidelity.py).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from splitserve.device_client.bandwidth import BandwidthMonitor
from splitserve.device_client.policy import (
    AdaptivePolicy,
    FixedPolicy,
    FramePlanner,
    LocalPolicy,
    Policy,
    WidthCost,
)
from splitserve.simulator.costs import StrategyCost
from splitserve.simulator.link import LinkConfig, LinkEmulator, link_pair
from splitserve.simulator.strategies import Strategy
from splitserve.timing import latency_summary

SEGMENT = 1448  # TCP payload per 1500-byte packet (IP + TCP headers with timestamps: 52 bytes)


@dataclass
class FrameOutcome:
    index: int
    capture_s: float
    latency_ms: float
    bytes: int
    width: int
    local: bool
    bandwidth_bps: float | None = None  # the estimate the frame was planned with
    sigma: float | None = None  # its uncertainty (standard deviation of log rate)
    probe: bool = False  # a local frame that also sent a probe


class _VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def transfer(link: LinkEmulator, nbytes: int, at: float) -> float:
    """Delivery time of the last byte of a message of nbytes sent at time ``at``."""
    done = at
    for start in range(0, max(nbytes, 1), SEGMENT):
        done = link.send_stream(min(SEGMENT, nbytes - start) or 1, at)
    return done


def make_planner(
    strategy: Strategy,
    width_costs: list[StrategyCost] | None,
    clock: Callable[[], float],
    local_ms: float | None = None,
    accuracies: list[float | None] | None = None,
) -> FramePlanner:
    """The planner a device client running this strategy would have (costs from measurements here)."""
    policy: Policy
    if strategy.adaptive:
        assert width_costs is not None
        accs = accuracies or [None] * len(width_costs)
        policy = AdaptivePolicy(
            [WidthCost(float(c.bytes.mean()) + c.wire_overhead, c.device_ms, a)
             for c, a in zip(width_costs, accs, strict=True)],
            server_ms=width_costs[-1].server_ms, local_ms=local_ms,
        )  # fmt: skip
    elif strategy.local:
        policy = LocalPolicy()
    else:
        policy = FixedPolicy(strategy.width)
    return FramePlanner(policy, BandwidthMonitor(clock=clock))


def simulate(
    strategy: Strategy,
    cost: StrategyCost,
    width_costs: list[StrategyCost] | None,
    uplink: LinkConfig,
    downlink: LinkConfig,
    frames: int,
    fps: float,
    deadline_ms: float,
    seed: int = 0,
    local_ms: float | None = None,
    accuracies: list[float | None] | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> list[FrameOutcome]:
    """Every frame of one strategy; ``accuracies`` (per width, from the manifest) guide the adaptive policy."""
    up, down = link_pair(uplink, downlink, seed, start=0.0)
    clock = _VirtualClock()
    planner = make_planner(strategy, width_costs, clock, local_ms, accuracies)
    n_sample = len(cost.bytes)
    device_free = 0.0
    results: list[tuple[float, float, int, float]] = []  # heap of (result time, send time, wire bytes, server ms)
    out: list[FrameOutcome] = []

    def deliver_until(t: float) -> None:
        while results and results[0][0] <= t:
            done, sent, nbytes, server_ms = heapq.heappop(results)
            clock.now = done
            planner.result(nbytes, (done - sent) * 1e3, server_ms)
        clock.now = t

    def offload(use: StrategyCost, width: int, k: int, start: float) -> tuple[float, float, int]:
        """Head, uplink, server, downlink for one frame: (sent, result time, payload bytes)."""
        payload = int(use.bytes[k])
        sent = start + use.device_ms / 1e3
        arrived = transfer(up, payload + use.wire_overhead, sent)
        done = transfer(down, use.response_bytes, arrived + use.server_ms / 1e3)
        heapq.heappush(results, (done, sent, payload + use.wire_overhead, use.server_ms))
        planner.encoded(width, payload + use.wire_overhead, use.device_ms)
        return sent, done, payload

    for i in range(frames):
        t = i / fps if fps > 0 else (device_free if not out else out[-1].capture_s + out[-1].latency_ms / 1e3)
        deliver_until(t)
        k = i % n_sample
        pending = [(nbytes, sent) for _, sent, nbytes, _ in results if sent <= t]
        decision, estimate = planner.plan(deadline_ms, True, pending)
        use = width_costs[decision.width] if (strategy.has_widths and width_costs is not None) else cost
        start = max(t, device_free)
        if decision.local:
            ms = local_ms if (strategy.adaptive and local_ms is not None) else cost.device_ms
            device_free = start + ms / 1e3
            if decision.probe and width_costs is not None:  # the probe's head runs after the local model
                device_free, _, _ = offload(width_costs[decision.width], decision.width, k, device_free)
            out.append(FrameOutcome(i, t, (start + ms / 1e3 - t) * 1e3, 0, 0, True, estimate.bandwidth_bps,
                                    estimate.sigma, decision.probe))  # fmt: skip
        else:
            width = decision.width if strategy.has_widths else strategy.width
            device_free, done, payload = offload(use, width, k, start)
            out.append(FrameOutcome(i, t, (done - t) * 1e3, payload, width, False, estimate.bandwidth_bps,
                                    estimate.sigma))  # fmt: skip
        if on_frame is not None:
            on_frame(i)
    return out


def summarize(outcomes: list[FrameOutcome], deadline_ms: float) -> dict:
    lat = np.array([o.latency_ms for o in outcomes])
    return {
        "bytes_per_frame": float(np.mean([o.bytes for o in outcomes])),
        "latency_ms": latency_summary(lat),
        "deadline_miss": float(np.mean(lat > deadline_ms)) if deadline_ms else 0.0,
    }
