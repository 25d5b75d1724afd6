"""The analytic model: every frame's latency from measured costs and the link model, with no processes.

A discrete-event model in virtual time, fast enough for wide sweeps:

    capture -> device compute (frames queue on the device CPU) -> uplink (FIFO
    at the link rate or trace, delay, jitter, loss as retransmission delay)
    -> server compute -> downlink -> result

It uses the same LinkEmulator as the proxy and the same bandwidth monitor and
width policy as the device client, and is validated against the emulated runs
(tests/test_simulator_analytic.py, benchmarks/link_fidelity.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from splitserve.device_client.bandwidth import BandwidthMonitor
from splitserve.device_client.policy import AdaptivePolicy, WidthCost
from splitserve.simulator.costs import StrategyCost
from splitserve.simulator.link import LinkConfig, LinkEmulator
from splitserve.simulator.strategies import Strategy

SEGMENT = 1448  # TCP payload per 1500-byte packet (IP + TCP headers with timestamps: 52 bytes)


@dataclass
class FrameOutcome:
    index: int
    capture_s: float
    latency_ms: float
    bytes: int
    width: int
    local: bool
    bandwidth_bps: float | None = None


class _VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _transfer(link: LinkEmulator, nbytes: int, at: float) -> float:
    """Delivery time of the last byte of a message of nbytes sent at time ``at``."""
    done = at
    for start in range(0, max(nbytes, 1), SEGMENT):
        done = link.send_stream(min(SEGMENT, nbytes - start) or 1, at)
    return done


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
) -> list[FrameOutcome]:
    up = LinkEmulator(uplink, seed, start=0.0)
    down = LinkEmulator(downlink, seed + 7, start=0.0)
    clock = _VirtualClock()
    monitor = BandwidthMonitor(clock=clock)
    policy = None
    if strategy.adaptive:
        assert width_costs is not None
        policy = AdaptivePolicy(
            [WidthCost(float(c.bytes.mean()) + c.wire_overhead, c.device_ms) for c in width_costs],
            server_ms=width_costs[-1].server_ms,
            local_ms=local_ms,
        )
    n_sample = len(cost.bytes)
    device_free = 0.0
    out = []
    for i in range(frames):
        t = i / fps if fps > 0 else (device_free if not out else out[-1].capture_s + out[-1].latency_ms / 1e3)
        clock.now = t
        k = i % n_sample
        use, width, local = cost, strategy.width, strategy.local
        estimate = monitor.estimate()
        if policy is not None:
            decision = policy.decide(estimate, deadline_ms)
            local = decision.local
            width = decision.width
            if not local:
                use = width_costs[width]  # type: ignore[index]
        if local:
            ms = local_ms if (policy is not None and local_ms is not None) else use.device_ms
            start = max(t, device_free)
            device_free = start + ms / 1e3
            out.append(FrameOutcome(i, t, (device_free - t) * 1e3, 0, 0, True, estimate.bandwidth_bps))
            continue
        start = max(t, device_free)
        sent = start + use.device_ms / 1e3
        device_free = sent
        payload = int(use.bytes[k])
        arrived = _transfer(up, payload + use.wire_overhead, sent)
        done = _transfer(down, use.response_bytes, arrived + use.server_ms / 1e3)
        clock.now = done
        monitor.add(payload + use.wire_overhead, (done - sent) * 1e3, use.server_ms)
        if policy is not None:
            policy.costs[width].update(payload + use.wire_overhead, use.device_ms)
        out.append(FrameOutcome(i, t, (done - t) * 1e3, payload, width, False, estimate.bandwidth_bps))
    return out


def summarize(outcomes: list[FrameOutcome], deadline_ms: float) -> dict:
    lat = np.array([o.latency_ms for o in outcomes])
    return {
        "bytes_per_frame": float(np.mean([o.bytes for o in outcomes])),
        "latency_ms": {q: float(np.percentile(lat, v)) for q, v in (("p50", 50), ("p95", 95), ("p99", 99))},
        "deadline_miss": float(np.mean(lat > deadline_ms)) if deadline_ms else 0.0,
    }
