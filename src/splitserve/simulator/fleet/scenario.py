"""What a fleet simulation is asked: devices, cells, servers, balancing, failures, autoscaling.

Everything here is plain data with checks, so that a garbage flag fails before a run starts.
The per-width costs (bytes on the wire, head time, accuracy) come from the model's manifest, as
the device client's own policy reads them (``policy_for_bundle``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from splitserve.device_client.policy import WidthCost, manifest_accuracy
from splitserve.simulator.fleet.service import ServiceCurve
from splitserve.simulator.traces import Trace, load_trace
from splitserve.simulator.units import parse_time_ms

# What the Helm chart's HorizontalPodAutoscaler does (autoscaling/v2 defaults, values.yaml's rule).
HPA_SYNC_S = 15.0
HPA_TOLERANCE = 0.1


@dataclass(frozen=True)
class Profile:
    """The fraction of the fleet active at time t: ``flat``, ``ramp:FROM..TO`` (a linear rise from
    the ``floor`` over [FROM, TO] s) or ``diurnal:PERIOD`` (a cosine between the floor and 1)."""

    kind: str = "flat"
    start_s: float = 0.0
    end_s: float = 0.0
    period_s: float = 0.0
    floor: float = 0.1

    def __call__(self, t: np.ndarray | float) -> np.ndarray:
        t = np.asarray(t, dtype=float)
        if self.kind == "flat":
            return np.ones_like(t)
        if self.kind == "ramp":
            x = np.clip((t - self.start_s) / max(self.end_s - self.start_s, 1e-9), 0.0, 1.0)
            return self.floor + (1.0 - self.floor) * x
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 - np.cos(2 * math.pi * t / self.period_s))

    @classmethod
    def parse(cls, spec: str, floor: float = 0.1) -> Profile:
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"profile floor must be within [0, 1], got {floor}")
        if spec == "flat":
            return cls("flat", floor=floor)
        m = re.fullmatch(r"ramp:([^.]+)\.\.(.+)", spec)
        if m:
            start, end = parse_time_ms(m.group(1)) / 1e3, parse_time_ms(m.group(2)) / 1e3
            if end <= start:
                raise ValueError(f"profile {spec!r}: the ramp must end after it starts")
            return cls("ramp", start, end, floor=floor)
        m = re.fullmatch(r"diurnal:(.+)", spec)
        if m:
            period = parse_time_ms(m.group(1)) / 1e3
            if period <= 0:
                raise ValueError(f"profile {spec!r}: the period must be > 0")
            return cls("diurnal", period_s=period, floor=floor)
        raise ValueError(f"unknown profile {spec!r}: use flat, ramp:60s..300s or diurnal:600s")


@dataclass(frozen=True)
class Failure:
    """``servers`` servers die at ``at_s``; each is serving again ``down_s`` later (the pod restarted)."""

    at_s: float
    servers: int = 1
    down_s: float = 30.0

    @classmethod
    def parse(cls, spec: str) -> Failure:
        """``AT[:N[:DOWN]]``, e.g. ``120s``, ``120s:2``, ``120s:1:45s``."""
        parts = spec.split(":")
        if not 1 <= len(parts) <= 3 or not parts[0]:
            raise ValueError(f"failure {spec!r}: use AT[:SERVERS[:DOWN]], e.g. 120s:1:30s")
        at = parse_time_ms(parts[0]) / 1e3
        try:
            n = int(parts[1]) if len(parts) > 1 else 1
        except ValueError:
            raise ValueError(f"failure {spec!r}: SERVERS must be an integer") from None
        down = parse_time_ms(parts[2]) / 1e3 if len(parts) > 2 else 30.0
        if at < 0 or n < 1 or down < 0:
            raise ValueError(f"failure {spec!r}: time, servers and downtime must be positive")
        return cls(at, n, down)


@dataclass(frozen=True)
class Autoscale:
    """The chart's HPA: replicas follow frames in flight per ready pod (``target``), within bounds."""

    min_servers: int = 2
    max_servers: int = 8
    target: float = 32.0  # splitserve_inflight_frames per pod (values.yaml: autoscaling.metric)
    down_window_s: float = 300.0  # scaleDownStabilizationSeconds
    startup_s: float = 30.0  # a new pod: scheduled, image there, models loaded, ready
    sync_s: float = HPA_SYNC_S

    def __post_init__(self) -> None:
        if not 1 <= self.min_servers <= self.max_servers:
            raise ValueError("autoscaling needs 1 <= min servers <= max servers")
        if self.target <= 0 or self.startup_s < 0 or self.down_window_s < 0:
            raise ValueError("autoscaling target must be > 0, start-up and window >= 0")


@dataclass(frozen=True)
class DeviceCosts:
    """What each width costs a device and is worth, and the local model's time (None: no local model)."""

    widths: list[WidthCost]
    local_ms: float | None = None
    response_bytes: int = 200

    @classmethod
    def from_manifest(cls, manifest: dict, overheads: list[int], head_ms: float | None = None,
                      slowdown: float = 1.0, local: bool = False) -> DeviceCosts:  # fmt: skip
        """``head_ms``: one head time for every width (measured where the devices run) instead of the
        manifest's (measured where the bundle was built); times ``slowdown`` either way."""
        widths = [
            WidthCost(float(w.get("bytes_mean") or 1000.0) + oh,
                      (head_ms if head_ms is not None else float(w.get("head_ms") or 1.0)) * slowdown,
                      manifest_accuracy(w))
            for w, oh in zip(manifest["widths"], overheads, strict=True)
        ]  # fmt: skip
        teacher = (manifest.get("evaluation") or {}).get("teacher") or {}
        local_ms = float(teacher["device_ms"]) * slowdown if local and teacher.get("device_ms") else None
        return cls(widths, local_ms)


@dataclass
class FleetScenario:
    devices: int
    duration_s: float
    traces: list[Trace]
    costs: DeviceCosts
    service: ServiceCurve
    servers: int = 4
    fps: float = 10.0
    deadline_ms: float = 150.0
    policy: str = "adaptive"
    cell_devices: int = 1
    cell_scale: float = 1.0
    delay_ms: float = 20.0
    link: str = "fluid"  # fluid: devices share their cell's capacity | packet: each its own packet link
    jitter_ms: float = 0.0  # packet links only: standard deviation of the one-way delay
    loss: float = 0.0  # packet links only: segment loss (each costs a retransmission timeout)
    connect_rtts: float = 2.0  # TCP + HTTP/2 (TLS adds one more)
    max_backoff_s: float = 5.0
    max_connection_age_s: float = 0.0  # edge-server --max-connection-age: streams re-balance (0: never)
    max_batch: int = 64
    max_delay_ms: float = 2.0
    max_queue: int = 256
    balancer: str = "round-robin"
    failures: list[Failure] = field(default_factory=list)
    autoscale: Autoscale | None = None
    profile: Profile = field(default_factory=Profile)
    aggregate: bool = True
    offsets: int = 8  # trace offsets a cell may start at, when aggregated
    phases: int = 4  # frame phases within a frame interval, when aggregated
    tiers: int = 8  # activity thresholds (who joins first on a ramp), when aggregated
    seed: int = 0
    bucket_s: float = 1.0
    # per-device model only: each device's (trace index, offset s, frame phase s), to replay a real run
    placements: list[tuple[int, float, float]] | None = None

    def __post_init__(self) -> None:
        if self.devices < 1 or self.duration_s <= 0 or self.fps <= 0 or self.deadline_ms <= 0:
            raise ValueError("devices, duration, fps and deadline must be positive")
        if self.servers < 1:
            raise ValueError("a fleet needs at least one server")
        if self.cell_devices < 1:
            raise ValueError("a cell holds at least one device")
        if self.balancer not in ("round-robin", "least"):
            raise ValueError(f"unknown balancer {self.balancer!r}: round-robin or least")
        if not self.traces:
            raise ValueError("a fleet needs at least one uplink trace")
        if self.policy != "adaptive" and not re.fullmatch(r"fixed:\d+", self.policy):
            raise ValueError(f"fleet policy {self.policy!r}: adaptive or fixed:W")
        if self.policy.startswith("fixed:") and int(self.policy[6:]) >= len(self.costs.widths):
            raise ValueError(f"policy {self.policy}: widths are 0..{len(self.costs.widths) - 1}")
        if self.link not in ("fluid", "packet"):
            raise ValueError(f"unknown link model {self.link!r}: fluid or packet")
        if self.link == "packet" and (self.aggregate or self.cell_devices != 1):
            raise ValueError("packet links are one device's own link: per device, cells of one")
        if self.link == "fluid" and (self.jitter_ms or self.loss):
            raise ValueError("jitter and loss need packet links (link='packet')")
        if self.jitter_ms < 0 or not 0 <= self.loss < 1:
            raise ValueError("jitter must be >= 0 and loss within [0, 1)")
        if self.placements is not None and (self.aggregate or len(self.placements) != self.devices
                                            or self.cell_devices != 1):  # fmt: skip
            raise ValueError("placements replay one device per cell, per device, without aggregation")
        for f in self.failures:
            if f.servers > self.servers and self.autoscale is None:
                raise ValueError(f"failure at {f.at_s:g} s kills {f.servers} of {self.servers} servers")

    @property
    def frames(self) -> float:
        return self.devices * self.duration_s * self.fps


def load_traces(paths: list[Path]) -> list[Trace]:
    """Every Mahimahi uplink trace in the given files or folders (``*.up``, or any file in a folder
    without ``.up``/``.down`` names)."""
    traces: list[Trace] = []
    for path in paths:
        if path.is_dir():
            files = sorted(path.glob("*.up")) or sorted(p for p in path.iterdir() if p.is_file()
                                                          and not p.name.endswith(".down")
                                                          and not p.name.startswith("README"))  # fmt: skip
            if not files:
                raise ValueError(f"no traces in {path}")
            traces.extend(load_trace(f) for f in files)
        elif path.exists():
            traces.append(load_trace(path))
        else:
            raise ValueError(f"no trace at {path}")
    return traces
