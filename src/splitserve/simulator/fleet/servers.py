"""Edge servers in a fleet: dynamic batching on a measured service curve, and the load balancer.

A ``ServerGroup`` is ``m`` identical servers that have seen the same history (the same devices
per server, the same queue): in the per-device model every server is its own group; aggregated,
the N servers of a deployment are one group until a failure or a scale-up makes them differ.
Frames arrive as pieces with a weight (how many devices' frames they stand for); a group's queue
holds each piece's weight per server. The batcher is the real server's rule: per (model, width)
queue, a batch closes at ``max_batch`` frames or when its first frame has waited
``max_delay_ms``; the oldest queue goes first; a frame whose deadline passed before its batch
starts is answered DEADLINE_EXCEEDED without being computed; a full queue (``max_queue``) answers
OVERLOADED at once.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from splitserve.simulator.fleet.service import ServiceCurve


@dataclass(eq=False)
class Piece:
    record: object  # the frame it belongs to (engine.FrameRecord)
    weight: float  # devices' frames it stands for, over the whole group
    arrived: float
    deadline_at: float
    captured: float = 0.0  # ties in arrival (frames a link delivers together): the older frame first


@dataclass(eq=False)
class ServerGroup:
    gid: int
    servers: int
    curve: ServiceCurve
    max_batch: int
    max_delay_s: float
    max_queue: int
    ready_at: float = 0.0
    up: bool = True
    connections: float = 0.0  # devices attached
    # the device entities attached (engine.Device), in the order they came: a dict, not a set, so that a
    # failure disconnects them (and draws their jitter) in the same order every run of one seed
    members: dict = field(default_factory=dict)
    queues: dict[int, collections.deque] = field(default_factory=dict)
    batch: list[Piece] = field(default_factory=list)
    try_at: float | None = None  # a batch-close check is scheduled then

    def ready(self, now: float) -> bool:
        return self.up and now >= self.ready_at

    def per_server(self, weight: float) -> float:
        return weight / self.servers

    def queued(self, width: int | None = None) -> float:
        """Frames waiting per server (one width's queue, or all)."""
        qs = [self.queues.get(width, ())] if width is not None else self.queues.values()
        return sum(self.per_server(p.weight) for q in qs for p in q)

    def inflight(self) -> float:
        """Frames received and not yet answered, per server (the HPA's metric)."""
        return self.queued() + sum(self.per_server(p.weight) for p in self.batch)

    def admit(self, piece: Piece, width: int) -> bool:
        """Queue a piece; False: the width's queue is full (OVERLOADED)."""
        if self.queued(width) + self.per_server(piece.weight) > self.max_queue + 1e-9:
            return False
        self.queues.setdefault(width, collections.deque()).append(piece)
        return True

    def _heads(self) -> list[tuple[float, float, int]]:
        return [(q[0].arrived, q[0].captured, w) for w, q in self.queues.items() if q]

    def next_start(self, now: float) -> float | None:
        """When the next batch should start, if the group is idle and something waits."""
        if self.batch or not self.ready(now):
            return None
        heads = self._heads()
        if not heads:
            return None
        arrived, _, width = min(heads)
        if self.queued(width) >= self.max_batch - 1e-9:
            return now
        return max(now, arrived + self.max_delay_s)

    def start_batch(self, now: float) -> tuple[list[Piece], list[Piece], float, float]:
        """Take the oldest queue's batch: (pieces computed, pieces expired unanswered, when their results
        are ready, when the group is free again).

        Aggregated, a batch of n < 1 frame per server is a batch of one on a fraction n of the servers,
        the others idle: its frames take a batch of one's time, the group is busy n times that (on
        average over its servers, which is what lets the next batch start)."""
        _, _, width = min(self._heads())
        queue = self.queues[width]
        taken: list[Piece] = []
        expired: list[Piece] = []
        room = float(self.max_batch)
        while queue and room > 1e-9:
            piece = queue[0]
            if piece.deadline_at <= now:
                expired.append(queue.popleft())
                continue
            need = self.per_server(piece.weight)
            if need <= room + 1e-9:
                taken.append(queue.popleft())
                room -= need
            else:  # the batch is full part-way through this piece: the rest waits for the next
                part = room * self.servers
                taken.append(Piece(piece.record, part, piece.arrived, piece.deadline_at, piece.captured))
                piece.weight -= part
                room = 0.0
        n = self.max_batch - room
        if not taken:
            return [], expired, now, now
        service_s = self.curve.ms(n) / 1e3
        self.batch = taken
        return taken, expired, now + service_s, now + service_s * min(n, 1.0)

    def finish_batch(self) -> None:
        self.batch = []

    def shrink(self, keep: float) -> list[tuple[Piece, float]]:
        """``keep`` of the group's servers survive (a fraction): every queued and computing piece keeps
        that share; returns (piece, weight lost) for the share that died with the others."""
        lost: list[tuple[Piece, float]] = []
        for piece in [*self.batch, *(p for q in self.queues.values() for p in q)]:
            gone = piece.weight * (1.0 - keep)
            if gone > 0:
                lost.append((piece, gone))
            piece.weight -= gone
        return lost


class Balancer:
    """Where a (re)connecting device's stream goes: a connection is pinned to its server.

    ``round-robin`` (a Kubernetes Service): servers in turn, weighted by each group's servers
    (smooth weighted round-robin, so that an aggregated entity lands whole on one group and groups
    fill in proportion to their servers). ``least`` (least connections, as Envoy or IPVS ``lc``):
    the group with the fewest devices per server once this one joins.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._credit: dict[int, float] = {}

    def pick(self, groups: list[ServerGroup], weight: float, now: float) -> ServerGroup | None:
        ready = [g for g in groups if g.ready(now)]
        if not ready:
            return None
        if self.kind == "least":
            return min(ready, key=lambda g: ((g.connections + weight) / g.servers, g.gid))
        total = sum(g.servers for g in ready)
        for g in ready:
            self._credit[g.gid] = self._credit.get(g.gid, 0.0) + g.servers
        best = max(ready, key=lambda g: (self._credit[g.gid], -g.gid))
        self._credit[best.gid] -= total
        return best
