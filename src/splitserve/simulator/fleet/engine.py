"""The fleet model: a discrete-event run of many devices, their cells, the balancer and the servers.

A frame's path, as in the analytic single-device model (simulator/analytic.py):

    capture -> the device's FramePlanner decides (local, or a width) -> head on the device CPU
    -> the device's share of its cell's uplink (FIFO) -> one-way delay -> its server's batcher
    (queue, batch on the measured service curve) -> result back -> the planner hears of it

Each device runs the device client's own ``FramePlanner`` (estimator and policy); a broken
connection waits ``reconnect_delay`` (the client's backoff and jitter) and the balancer places it
again. Servers fail, restart and are added or removed by the chart's autoscaler rule.

**Aggregation.** Devices that are identical (same cell trace and offset, frame phase, activity
tier and server group) see identical inputs, so one entity with a weight stands for all of them;
servers with identical histories are one group. ``FleetScenario.aggregate = False`` gives every
device its own entity, random offset and phase, and every server its own group: the per-device
model that the aggregated one is checked against (tests/test_fleet.py, benchmarks/fleet.py).
"""

from __future__ import annotations

import copy
import heapq
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from splitserve.device_client.bandwidth import BandwidthMonitor
from splitserve.device_client.policy import AdaptivePolicy, FixedPolicy, FramePlanner
from splitserve.device_client.supervisor import reconnect_delay
from splitserve.edge_server.config import MAX_CONNECTION_AGE_GRACE_S
from splitserve.simulator.fleet.links import DeviceLink, PacketLink, ShareCurve
from splitserve.simulator.fleet.scenario import HPA_TOLERANCE, FleetScenario
from splitserve.simulator.fleet.servers import Balancer, Piece, ServerGroup

HANDSHAKE_BYTES = 600  # a stream's opening bytes on the uplink: HTTP/2 preface, settings, the request headers
JITTER_PARTS = 4  # an aggregated chunk of devices that lost its server reconnects in this many waves
LATENCY_BIN_MS = 2.0
LATENCY_BINS = 2000  # up to 4 s; later results land in the last bin
WINDOW_S = 10.0  # latency percentiles over time: per window
_EPS = 1e-9


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FrameOutcome:
    """One frame's outcome for a device entity (``FleetSim(keep_frames=True)``): for small fleets."""

    device: int
    capture_s: float
    latency_ms: float | None  # None: no result (lost, OVERLOADED, expired at the server)
    width: int | None
    bytes: float
    local: bool
    why: str | None = None


@dataclass(eq=False)
class FrameRecord:
    device: Device
    capture: float
    sent: float
    nbytes: float
    width: int
    deadline_at: float
    outstanding: float  # weight whose outcome is still to come
    probe: bool = False  # a local frame's probe: its result feeds the bandwidth monitor, it is no outcome
    transit: list[Piece] = field(default_factory=list)


@dataclass(eq=False)
class Device:
    """One device, or (aggregated) ``weight`` identical devices."""

    did: int
    weight: float
    link: DeviceLink | PacketLink
    tier: float  # active while the profile is at least this
    planner: FramePlanner
    phase: float  # its frames are captured at phase + k / fps
    count: int = 0  # frames captured so far
    state: str = "idle"  # idle (inactive) | connecting | up | down (backing off)
    group: ServerGroup | None = None
    attempt: int = 0
    jitter: float | None = None  # fixed jitter quantile (aggregated); None: random per attempt
    device_free: float = 0.0
    inflight: list[FrameRecord] = field(default_factory=list)
    unsent: list[FrameRecord] = field(default_factory=list)
    epoch: int = 0  # bumped when the connection changes: stale connect events are ignored


class Timeline:
    """Per-bucket counts (weighted by devices) and per-window latency histograms."""

    def __init__(self, duration_s: float, bucket_s: float, deadline_ms: float) -> None:
        self.bucket_s = bucket_s
        self.deadline_ms = deadline_ms
        n = int(math.ceil(duration_s / bucket_s))
        self.n = n
        z = lambda: np.zeros(n)  # noqa: E731
        self.frames, self.misses, self.local, self.offloaded, self.bytes = z(), z(), z(), z(), z()
        self.lost, self.overloaded, self.expired = z(), z(), z()
        self.received, self.rejected = z(), z()  # frames reaching a live server, and those it answered OVERLOADED
        self.devices, self.servers_up, self.servers_ready, self.busy_s = z(), z(), z(), z()
        self.width_frames: dict[int, np.ndarray] = {}
        self.windows = int(math.ceil(duration_s / WINDOW_S))
        self.hist = np.zeros((self.windows, LATENCY_BINS))

    def _b(self, t: float) -> int:
        return min(max(int(t / self.bucket_s), 0), self.n - 1)

    def outcome(self, capture: float, weight: float, latency_ms: float | None, width: int | None = None,
                nbytes: float = 0.0, local: bool = False, why: str | None = None) -> None:  # fmt: skip
        """One frame's outcome (``weight`` devices' frames): ``latency_ms`` None = no result."""
        b = self._b(capture)
        self.frames[b] += weight
        if local:
            self.local[b] += weight
        else:
            self.offloaded[b] += weight
            self.bytes[b] += weight * nbytes
            if width is not None:
                self.width_frames.setdefault(width, np.zeros(self.n))[b] += weight
        if latency_ms is None or latency_ms > self.deadline_ms:
            self.misses[b] += weight
        if why == "lost":
            self.lost[b] += weight
        elif why == "overloaded":
            self.overloaded[b] += weight
        elif why == "expired":
            self.expired[b] += weight
        if latency_ms is not None:
            w = min(int(capture / WINDOW_S), self.windows - 1)
            self.hist[w, min(int(latency_ms / LATENCY_BIN_MS), LATENCY_BINS - 1)] += weight

    def utilisation(self) -> np.ndarray:
        """Per bucket: the share of the ready servers' time spent computing."""
        return self.busy_s / np.maximum(self.servers_ready * self.bucket_s, _EPS)


def percentile_ms(hist: np.ndarray, q: float) -> float | None:
    total = hist.sum()
    if total <= 0:
        return None
    i = int(np.searchsorted(np.cumsum(hist), q * total))
    return (min(i, len(hist) - 1) + 1) * LATENCY_BIN_MS


class FleetSim:
    def __init__(self, sc: FleetScenario, progress: Callable[[float], None] | None = None,
                 keep_frames: bool = False) -> None:  # fmt: skip
        self.sc = sc
        self.progress = progress
        self.frames: list[FrameOutcome] | None = [] if keep_frames else None
        self.rng = np.random.default_rng(sc.seed)
        self.clock = _Clock()
        self.events: list = []
        self._seq = itertools.count()
        self.tl = Timeline(sc.duration_s, sc.bucket_s, sc.deadline_ms)
        self.groups: list[ServerGroup] = []
        self._gid = itertools.count()
        self.balancer = Balancer(sc.balancer)
        self.devices: list[Device] = []
        self._did = itertools.count()
        self.handshake_s = sc.connect_rtts * 2 * sc.delay_ms / 1e3
        self.hpa_history: list[tuple[float, int]] = []
        self.last_scale_down = -math.inf
        self.scale_events: list[dict] = []
        self.events_run = 0
        if sc.aggregate:
            self._add_group(sc.servers, 0.0)
        else:
            for _ in range(sc.servers):
                self._add_group(1, 0.0)
        self._make_devices()

    # -- set-up ------------------------------------------------------------
    def _add_group(self, servers: int, ready_at: float) -> ServerGroup:
        sc = self.sc
        g = ServerGroup(next(self._gid), servers, sc.service, sc.max_batch, sc.max_delay_ms / 1e3, sc.max_queue,
                        ready_at=ready_at)  # fmt: skip
        self.groups.append(g)
        return g

    def _planner(self) -> FramePlanner:
        costs = [copy.copy(c) for c in self.sc.costs.widths]
        if self.sc.policy == "adaptive":
            policy = AdaptivePolicy(costs, server_ms=self.sc.service.ms(1.0), local_ms=self.sc.costs.local_ms)
        else:
            policy = FixedPolicy(int(self.sc.policy.split(":")[1]))
        return FramePlanner(policy, BandwidthMonitor(clock=self.clock))

    def _share(self) -> Callable[[np.ndarray], np.ndarray]:
        k, profile = self.sc.cell_devices, self.sc.profile
        if k == 1:
            return lambda t: np.ones_like(t)
        return lambda t: 1.0 / np.maximum(1.0, k * profile(t))

    def _make_devices(self) -> None:
        """Cells draw a trace and an offset; devices a frame phase and an activity tier."""
        sc = self.sc
        cells = int(math.ceil(sc.devices / sc.cell_devices))
        horizon = sc.duration_s + 5.0
        share = self._share()
        interval = 1.0 / sc.fps
        if sc.aggregate:
            # identical devices are one entity: trace x offset bucket x phase x tier
            counts: dict[tuple[int, int, int, int], float] = {}
            cell_trace = self.rng.integers(len(sc.traces), size=cells)
            cell_offset = self.rng.integers(sc.offsets, size=cells)
            for c in range(cells):
                members = min(sc.cell_devices, sc.devices - c * sc.cell_devices)
                for j in range(members):
                    key = (int(cell_trace[c]), int(cell_offset[c]), (c * sc.cell_devices + j) % sc.phases,
                           self._tier_of(j, members, c))  # fmt: skip
                    counts[key] = counts.get(key, 0.0) + 1.0
            curves: dict[tuple[int, int], ShareCurve] = {}
            for (ti, oi, ph, tier), w in sorted(counts.items()):
                trace = sc.traces[ti]
                if (ti, oi) not in curves:
                    offset = (oi + 0.5) / sc.offsets * trace.period_ms / 1e3
                    curves[(ti, oi)] = ShareCurve(trace, offset, horizon, sc.cell_scale, share)
                self._new_device(w, DeviceLink(curves[(ti, oi)], sc.delay_ms), (ph + 0.5) / sc.phases * interval, tier)
        elif sc.placements is not None:
            for trace_index, offset, phase in sc.placements:
                self._new_device(1.0, self._link(sc.traces[trace_index], offset, horizon, share), phase, 0.0)
        else:
            for c in range(cells):
                trace = sc.traces[int(self.rng.integers(len(sc.traces)))]
                offset = float(self.rng.uniform(0, trace.period_ms / 1e3))
                link = self._link(trace, offset, horizon, share)
                members = min(sc.cell_devices, sc.devices - c * sc.cell_devices)
                for j in range(members):
                    self._new_device(1.0, link if j == 0 else link.split(), float(self.rng.uniform(0, interval)),
                                     self._tier_of(j, members, c))  # fmt: skip

    def _link(self, trace, offset: float, horizon: float, share) -> DeviceLink | PacketLink:  # type: ignore[no-untyped-def]
        """A per-device entity's link: its share of its cell, or (``link="packet"``) its own packet link."""
        sc = self.sc
        if sc.link == "packet":
            return PacketLink(trace, offset, sc.delay_ms, sc.jitter_ms, sc.loss, sc.seed + len(self.devices),
                              sc.costs.response_bytes)  # fmt: skip
        return DeviceLink(ShareCurve(trace, offset, horizon, sc.cell_scale, share), sc.delay_ms)

    def _tier_of(self, j: int, members: int, cell: int) -> float:
        """Who is active when only a fraction of the fleet is: the j-th of a cell's devices joins once
        the profile reaches its threshold (so that every cell holds about profile x its devices)."""
        if self.sc.profile.kind == "flat":
            return 0.0
        if members > 1:
            u = (j + 0.5) / members
        else:  # cells of one: the cells themselves are spread over the thresholds
            u = ((cell * 0.6180339887) % 1.0) if not self.sc.aggregate else (cell % self.sc.tiers + 0.5) / self.sc.tiers
        if self.sc.aggregate and members > 1:
            u = (math.floor(u * self.sc.tiers) + 0.5) / self.sc.tiers
        return u

    def _new_device(self, weight: float, link: DeviceLink | PacketLink, phase: float, tier: float) -> Device:
        d = Device(next(self._did), weight, link, tier, self._planner(), phase)
        self.devices.append(d)
        self._at(phase, "frame", d)
        return d

    # -- the event loop -----------------------------------------------------
    def _at(self, t: float, kind: str, *args) -> None:  # type: ignore[no-untyped-def]
        heapq.heappush(self.events, (t, next(self._seq), kind, args))

    def run(self) -> FleetResult:
        sc = self.sc
        for f in sc.failures:
            self._at(f.at_s, "fail", f)
        if sc.autoscale is not None:
            self._at(sc.autoscale.sync_s, "hpa")
        self._at(0.0, "sample")
        handlers = {
            "frame": self._frame, "arrive": self._arrive, "try": self._try, "done": self._done,
            "result": self._result, "fail": self._fail, "reconnect": self._reconnect,
            "connected": self._connected, "aged": self._aged, "hpa": self._hpa, "sample": self._sample,
        }  # fmt: skip
        # the fleet is running when the model starts: devices active then are already connected
        active = float(sc.profile(0.0))
        for d in self.devices:
            g = self.balancer.pick(self.groups, d.weight, 0.0) if active >= d.tier else None
            if g is not None:
                self._attach(d, g)
                self._connected(d, g, d.epoch)
        t0 = time.perf_counter()
        next_progress = 0.0
        end = sc.duration_s
        while self.events:
            t, _, kind, args = heapq.heappop(self.events)
            if t > end + sc.deadline_ms / 1e3 + 5.0:
                break
            self.clock.now = t
            handlers[kind](*args)
            self.events_run += 1
            if self.progress is not None and t >= next_progress:
                self.progress(min(t / end, 1.0))
                next_progress = t + end / 100
        for d in self.devices:  # frames that never got out, or never back (a link in an outage to the end)
            for rec in d.unsent:
                self._outcome(d, rec.capture, rec.outstanding, None, rec.width, rec.nbytes, why="lost")
            for rec in d.inflight:
                if rec.outstanding > _EPS and not rec.probe:
                    self._outcome(d, rec.capture, rec.outstanding, None, rec.width, rec.nbytes)
        return FleetResult(sc, self.tl, self.scale_events, time.perf_counter() - t0, self.events_run,
                           len(self.devices))  # fmt: skip

    def _outcome(self, d: Device, capture: float, weight: float, latency_ms: float | None, width: int | None = None,
                 nbytes: float = 0.0, local: bool = False, why: str | None = None) -> None:  # fmt: skip
        self.tl.outcome(capture, weight, latency_ms, width, nbytes, local, why)
        if self.frames is not None:
            self.frames.append(FrameOutcome(d.did, capture, latency_ms, width, nbytes, local, why))

    # -- devices -----------------------------------------------------------
    def _next_capture(self, d: Device) -> float:
        return d.phase + d.count / self.sc.fps  # counted, not summed: no drift over a long run

    def _frame(self, d: Device) -> None:
        now = self.clock.now
        if now >= self.sc.duration_s or d.weight <= _EPS:
            return
        d.count += 1
        self._at(self._next_capture(d), "frame", d)
        if self.sc.profile(now) < d.tier:  # not in use now
            if d.state != "idle":
                self._detach(d)
                d.state = "idle"
                d.epoch += 1
            return
        if d.state == "idle":
            d.state, d.attempt = "down", 0
            self._reconnect(d, d.epoch)
        # what the client's ledger holds as written and unanswered (a frame still in its head is not)
        pending = [(r.nbytes, r.sent) for r in d.inflight if r.sent <= now]
        decision, _ = d.planner.plan(self.sc.deadline_ms, d.state == "up", pending)
        start = max(now, d.device_free)
        if decision.local:
            ms = self.sc.costs.local_ms or 0.0
            d.device_free = start + ms / 1e3
            self._outcome(d, now, d.weight, (d.device_free - now) * 1e3, local=True)
            if not (decision.probe and d.state == "up"):
                return
            # the probe: the narrowest width of the same frame, after the local model, its result
            # for the bandwidth monitor only (it has no deadline and is no outcome)
            start = d.device_free
        cost = self.sc.costs.widths[decision.width]
        head_ms = cost.head_ms
        d.device_free = sent = start + head_ms / 1e3
        d.planner.encoded(decision.width, int(cost.bytes), head_ms)
        deadline_at = math.inf if decision.local else now + self.sc.deadline_ms / 1e3
        rec = FrameRecord(d, now, sent, cost.bytes, decision.width, deadline_at, d.weight, probe=decision.local)
        if d.state == "up":
            self._send(d, rec, sent)
        else:
            d.unsent.append(rec)

    def _send(self, d: Device, rec: FrameRecord, at: float) -> None:
        assert d.group is not None
        arrive = d.link.send(rec.nbytes, at)
        rec.sent = at
        # the client sends what is left of the deadline when it writes the frame, and the server counts
        # that from the frame's arrival: the time on the uplink is not counted against it there
        piece = Piece(rec, rec.outstanding, arrive, rec.deadline_at + (arrive - at), rec.capture)
        rec.transit.append(piece)
        d.inflight.append(rec)
        self._at(arrive, "arrive", piece, d.group)

    def _finish_piece(self, piece: Piece, latency_ms: float | None, why: str | None = None,
                      server_ms: float = 0.0) -> None:  # fmt: skip
        rec: FrameRecord = piece.record  # type: ignore[assignment]
        d = rec.device
        if piece.weight > _EPS and not rec.probe:
            self._outcome(d, rec.capture, piece.weight, latency_ms, rec.width, rec.nbytes, why=why)
        rec.outstanding -= piece.weight
        piece.weight = 0.0
        if rec.outstanding <= 1e-6 and rec in d.inflight:
            d.inflight.remove(rec)
            # as the client: a late result measures the link, and so does a frame the server found late
            if (latency_ms is not None and why is None) or why == "expired":
                d.planner.result(int(rec.nbytes), (self.clock.now - rec.sent) * 1e3, server_ms)

    # -- servers -----------------------------------------------------------
    def _arrive(self, piece: Piece, g: ServerGroup) -> None:
        now = self.clock.now
        rec: FrameRecord = piece.record  # type: ignore[assignment]
        if piece in rec.transit:
            rec.transit.remove(piece)
        if piece.weight <= _EPS:
            return
        if not g.up:
            self._finish_piece(piece, None, "lost")
            return
        piece.arrived = now
        b = self.tl._b(now)
        self.tl.received[b] += piece.weight
        if not g.admit(piece, rec.width):  # OVERLOADED, answered at once
            self.tl.rejected[b] += piece.weight
            self._at(rec.device.link.back(now), "result", piece, None, "overloaded", 0.0)
            return
        self._schedule_batch(g)

    def _schedule_batch(self, g: ServerGroup) -> None:
        start = g.next_start(self.clock.now)
        if start is not None and (g.try_at is None or start < g.try_at):
            g.try_at = start
            self._at(start, "try", g)

    def _try(self, g: ServerGroup) -> None:
        now = self.clock.now
        if g.try_at is not None and now + _EPS < g.try_at:
            return
        g.try_at = None
        start = g.next_start(now)
        if start is None:
            return
        if start > now + _EPS:
            g.try_at = start
            self._at(start, "try", g)
            return
        taken, expired, done_at, free_at = g.start_batch(now)
        for piece in expired:  # DEADLINE_EXCEEDED, not computed
            back = piece.record.device.link.back(now)  # type: ignore[attr-defined]
            self._at(back, "result", piece, None, "expired", (now - piece.arrived) * 1e3)
        if taken:
            self.tl.busy_s[self.tl._b(now)] += (free_at - now) * g.servers
            for piece in taken:
                rec: FrameRecord = piece.record  # type: ignore[assignment]
                back = rec.device.link.back(done_at)
                self._at(back, "result", piece, (back - rec.capture) * 1e3, None, (done_at - piece.arrived) * 1e3)
            self._at(free_at, "done", g)
        else:
            self._schedule_batch(g)

    def _done(self, g: ServerGroup) -> None:
        g.finish_batch()
        if g.up:
            self._schedule_batch(g)

    def _result(self, piece: Piece, latency_ms: float | None, why: str | None, server_ms: float) -> None:
        self._finish_piece(piece, latency_ms, why, server_ms)

    # -- connections ---------------------------------------------------------
    def _attach(self, d: Device, g: ServerGroup) -> None:
        d.group = g
        g.connections += d.weight
        g.members[d] = None

    def _detach(self, d: Device) -> None:
        if d.group is not None:
            d.group.connections -= d.weight
            d.group.members.pop(d, None)
            d.group = None

    def _reconnect(self, d: Device, epoch: int) -> None:
        if epoch != d.epoch or d.state != "down":
            return
        now = self.clock.now
        g = self.balancer.pick(self.groups, d.weight, now)
        if g is None:
            d.attempt += 1
            self._backoff(d)
            return
        d.state = "connecting"
        self._attach(d, g)
        # the stream's first bytes (TLS/HTTP/2 preface, the request) wait on the device's uplink like any
        # frame: a device reconnecting in an outage is connected when the outage ends, not before
        preface = d.link.back(d.link.send(HANDSHAKE_BYTES, now))
        self._at(max(now + self.handshake_s, preface), "connected", d, g, d.epoch)

    def _backoff(self, d: Device) -> None:
        jitter = d.jitter if d.jitter is not None else float(self.rng.uniform(0.5, 1.0))
        self._at(self.clock.now + reconnect_delay(d.attempt, self.sc.max_backoff_s, jitter), "reconnect", d, d.epoch)

    def _connected(self, d: Device, g: ServerGroup, epoch: int) -> None:
        if epoch != d.epoch or d.group is not g:
            return
        now = self.clock.now
        if not g.up:
            self._detach(d)
            d.state = "down"
            d.attempt += 1
            self._backoff(d)
            return
        d.state = "up"
        d.attempt = 0
        if self.sc.max_connection_age_s > 0:  # gRPC's max_connection_age (+-10 %), then the grace
            age = self.sc.max_connection_age_s * float(self.rng.uniform(0.9, 1.1)) + MAX_CONNECTION_AGE_GRACE_S
            self._at(now + age, "aged", d, g, d.epoch)
        waiting, d.unsent = d.unsent, []
        for rec in waiting:  # the ledger's unsent frames go out now, if their deadline allows
            if rec.deadline_at > now:
                self._send(d, rec, now)
            else:
                self._outcome(d, rec.capture, rec.outstanding, None, rec.width, rec.nbytes, why="lost")

    def _aged(self, d: Device, g: ServerGroup, epoch: int) -> None:
        """The server ended an old stream (GOAWAY, then the grace): the device reconnects through the
        balancer, as after any stream that had answered, and sends again what was unanswered (here:
        what was in flight is answered on the old server)."""
        if epoch != d.epoch or d.group is not g or d.state != "up":
            return
        self._detach(d)
        d.state, d.attempt, d.epoch = "down", 0, d.epoch + 1
        self._backoff(d)

    def _split(self, d: Device, fraction: float) -> Device:
        """Move ``fraction`` of an aggregated device's weight to a new entity (same state, no frames in
        flight: the caller settles those), which continues the same frame schedule."""
        clone = Device(next(self._did), d.weight * fraction, d.link.split(), d.tier,
                       copy.deepcopy(d.planner, {id(self.clock): self.clock}), d.phase, d.count)  # fmt: skip
        clone.device_free, clone.state, clone.attempt, clone.jitter = d.device_free, d.state, d.attempt, d.jitter
        d.weight -= clone.weight
        self.devices.append(clone)
        self._at(self._next_capture(clone), "frame", clone)  # the parent's next capture
        return clone

    # -- failures and scaling -------------------------------------------------
    def _fail(self, f) -> None:  # type: ignore[no-untyped-def]
        now = self.clock.now
        left = f.servers
        for g in sorted((g for g in self.groups if g.ready(now)), key=lambda g: g.gid):
            if left <= 0:
                break
            k = min(left, g.servers)
            left -= k
            self._remove_servers(g, k, lost=True)
            self._add_group(k, now + f.down_s)  # the Deployment starts replacements
        if left == f.servers:
            self.scale_events.append({"t": round(now, 2), "event": "failure", "servers": 0, "note": "none ready"})
        else:
            self.scale_events.append({"t": round(now, 2), "event": "failure", "servers": f.servers - left,
                                      "back_at": round(now + f.down_s, 2)})  # fmt: skip

    def _remove_servers(self, g: ServerGroup, k: int, lost: bool) -> None:
        """Take ``k`` servers out of a group; their devices reconnect, their frames in flight are lost."""
        keep = (g.servers - k) / g.servers
        if lost or keep <= 0:  # a drained server (scale-down) answers what it holds first
            for piece, gone in g.shrink(keep):
                part = Piece(piece.record, gone, piece.arrived, piece.deadline_at)
                self._finish_piece(part, None, "lost")
        for d in list(g.members):
            self._disconnect_share(d, 1.0 - keep, g)
        if keep <= 0:
            g.up = False
            g.queues.clear()
            g.batch = []
            g.connections = 0.0
        else:
            g.servers -= k
            g.connections *= keep

    def _disconnect_share(self, d: Device, fraction: float, g: ServerGroup) -> None:
        """``fraction`` of device entity d loses its server: its frames on the way there are lost."""
        for rec in list(d.inflight):
            for piece in rec.transit:
                gone = piece.weight * fraction
                if gone > _EPS:
                    self._finish_piece(Piece(rec, gone, piece.arrived, piece.deadline_at), None, "lost")
                    piece.weight -= gone
        for rec in d.unsent:
            rec.outstanding *= 1.0 - fraction
        if fraction >= 1.0 - _EPS:
            parts = [d]
            g.members.pop(d, None)
            d.group = None
        else:
            g.members.pop(d, None)
            moved = self._split(d, fraction)
            g.members[d] = None
            parts = [moved]
        waves: list[Device] = []
        for part in parts:
            part.group, part.state, part.epoch = None, "down", part.epoch + 1
            part.attempt = 0  # the connection had answered: the first retry comes soon
            if self.sc.aggregate and part.weight > 1.0 + _EPS:
                chunks = [part] + [self._split(part, 1.0 / (JITTER_PARTS - i)) for i in range(JITTER_PARTS - 1)]
                for i, c in enumerate(chunks):
                    c.jitter = 0.5 + 0.5 * (i + 0.5) / JITTER_PARTS
                    c.group, c.state = None, "down"
                waves.extend(chunks)
            else:
                waves.append(part)
        for part in waves:
            self._backoff(part)

    def _hpa(self) -> None:
        a = self.sc.autoscale
        assert a is not None
        now = self.clock.now
        self._at(now + a.sync_s, "hpa")
        ready = [g for g in self.groups if g.ready(now)]
        live = [g for g in self.groups if g.up]
        current = sum(g.servers for g in live)
        n_ready = sum(g.servers for g in ready)
        if not n_ready:
            return
        metric = sum(g.inflight() * g.servers for g in ready) / n_ready
        ratio = metric / a.target
        desired = current if abs(ratio - 1.0) <= HPA_TOLERANCE else math.ceil(n_ready * ratio)
        desired = min(max(desired, a.min_servers), a.max_servers)
        self.hpa_history.append((now, desired))
        if desired > current:
            add = min(desired - current, max(4, current))
            self._add_group(add, now + a.startup_s)
            self.scale_events.append({"t": round(now, 2), "event": "scale-up", "servers": add,
                                      "metric": round(metric, 1), "ready_at": round(now + a.startup_s, 2)})  # fmt: skip
            return
        recent = [n for t, n in self.hpa_history if t > now - a.down_window_s]
        target = max(recent)
        if target < current and now - self.last_scale_down >= 60.0:
            g = max(live, key=lambda g: g.gid)  # the newest pod goes first
            self._remove_servers(g, 1, lost=False)
            self.last_scale_down = now
            self.scale_events.append({"t": round(now, 2), "event": "scale-down", "servers": 1,
                                      "metric": round(metric, 1)})  # fmt: skip

    def _sample(self) -> None:
        now = self.clock.now
        b = self.tl._b(now)
        active = float(self.sc.profile(now))
        self.tl.devices[b] = sum(d.weight for d in self.devices if active >= d.tier)
        self.tl.servers_up[b] = sum(g.servers for g in self.groups if g.up)
        self.tl.servers_ready[b] = sum(g.servers for g in self.groups if g.ready(now))
        if now + self.sc.bucket_s < self.sc.duration_s:
            self._at(now + self.sc.bucket_s, "sample")


@dataclass
class FleetResult:
    scenario: FleetScenario
    timeline: Timeline
    scale_events: list[dict]
    wall_s: float
    events: int
    entities: int

    def summary(self) -> dict:
        tl, sc = self.timeline, self.scenario
        frames = float(tl.frames.sum())
        hist = tl.hist.sum(axis=0)
        server_s = float(np.sum(tl.servers_up) * tl.bucket_s)
        util = tl.utilisation()
        worst = self.worst_minute()
        return {
            "frames": round(frames),
            "miss": frames and float(tl.misses.sum() / frames),
            "local": frames and float(tl.local.sum() / frames),
            "lost": frames and float(tl.lost.sum() / frames),
            "overloaded": frames and float(tl.overloaded.sum() / frames),
            "expired_at_server": frames and float(tl.expired.sum() / frames),
            "p50_ms": percentile_ms(hist, 0.5), "p95_ms": percentile_ms(hist, 0.95),
            "p95_in_time_ms": percentile_ms(hist[: int(sc.deadline_ms / LATENCY_BIN_MS)], 0.95),
            "bytes_per_offloaded_frame": float(tl.bytes.sum() / max(tl.offloaded.sum(), _EPS)),
            "width_share": {str(w): round(float(a.sum() / max(tl.offloaded.sum(), _EPS)), 4)
                            for w, a in sorted(tl.width_frames.items())},
            "utilisation": float(np.mean(util[tl.servers_ready > 0])) if np.any(tl.servers_ready > 0) else 0.0,
            "server_hours": server_s / 3600,
            "server_hours_per_million_frames": server_s / 3600 / (frames / 1e6) if frames else None,
            "worst_minute": worst, "failure": self.failure_report(),
            "wall_s": round(self.wall_s, 2), "events": self.events, "entities": self.entities,
        }  # fmt: skip

    def failure_report(self) -> dict | None:
        """After the first failure: the worst 5 s, how long until misses are back within a point of the
        minute before it, and the share of frames reaching live servers that were not answered OVERLOADED."""
        if not self.scenario.failures:
            return None
        tl = self.timeline
        at = int(min(f.at_s for f in self.scenario.failures) / tl.bucket_s)
        span = max(int(round(5.0 / tl.bucket_s)), 1)
        rate = lambda a, b: float(tl.misses[a:b].sum() / max(tl.frames[a:b].sum(), _EPS))  # noqa: E731
        before = rate(max(0, at - int(60 / tl.bucket_s)), at)
        windows = [(i, rate(i, i + span)) for i in range(at, tl.n - span + 1)]
        worst = max(windows, key=lambda w: w[1], default=(at, 0.0))
        back = next((i for i, r in windows if i > worst[0] and r <= before + 0.01), None)
        received = float(tl.received[at:].sum())
        return {
            "failure_s": at * tl.bucket_s, "miss_before": before,
            "worst_5s": {"start_s": worst[0] * tl.bucket_s, "miss": worst[1]},
            "recovered_after_s": None if back is None else (back - at) * tl.bucket_s,
            "not_overloaded_share": 1.0 - float(tl.rejected[at:].sum()) / received if received else None,
        }

    def worst_minute(self, after_s: float | None = None) -> dict | None:
        """The 60 s window with the most misses (from ``after_s``, default the first failure)."""
        tl = self.timeline
        if after_s is None:
            after_s = min((f.at_s for f in self.scenario.failures), default=0.0)
        span = max(int(round(60.0 / tl.bucket_s)), 1)
        first = int(after_s / tl.bucket_s)
        if tl.n - first < 1:
            return None
        span = min(span, tl.n - first)
        m = np.convolve(tl.misses[first:], np.ones(span), "valid")
        f = np.convolve(tl.frames[first:], np.ones(span), "valid")
        rate = np.where(f > 0, m / np.maximum(f, _EPS), 0.0)
        i = int(np.argmax(rate))
        return {"start_s": round((first + i) * tl.bucket_s, 1), "miss": float(rate[i])}

    def series(self) -> dict:
        tl = self.timeline
        frames = np.maximum(tl.frames, _EPS)
        p95 = [percentile_ms(h, 0.95) for h in tl.hist]
        return {
            "bucket_s": tl.bucket_s,
            "t_s": (np.arange(tl.n) * tl.bucket_s).tolist(),
            "devices": tl.devices.round(1).tolist(),
            "frames_per_s": (tl.frames / tl.bucket_s).round(1).tolist(),
            "miss": np.where(tl.frames > 0, tl.misses / frames, 0.0).round(4).tolist(),
            "servers_up": tl.servers_up.tolist(), "servers_ready": tl.servers_ready.tolist(),
            "utilisation": tl.utilisation().round(3).tolist(),
            "p95_ms_window_s": WINDOW_S, "p95_ms": p95,
        }  # fmt: skip


def simulate_fleet(sc: FleetScenario, progress: Callable[[float], None] | None = None) -> FleetResult:
    return FleetSim(sc, progress).run()
