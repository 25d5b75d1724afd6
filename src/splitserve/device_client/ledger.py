"""The frame ledger: every frame from infer() to its one outcome, and the server's window.

A frame is *in flight* from the moment it is queued until its outcome is decided and the
server no longer holds it; *unsent* while it waits for the link (first time, after a
reconnect, or after an OVERLOADED answer); *outstanding* while it is written on the current
connection and unanswered. The server's window bounds the outstanding frames. The ledger
keeps these three consistent; the connection supervisor writes what it hands out, and the
client waits for each frame's outcome here.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from splitserve.device_client.errors import ClientError
from splitserve.device_client.transports.base import DEFAULT_WINDOW
from splitserve.proto import edge_inference_pb2 as pb

# Results that mean "not now": the frame is sent again while its deadline allows.
RETRY_STATUSES = (pb.Result.Status.OVERLOADED, pb.Result.Status.UNAVAILABLE)
RETRY_BACKOFF_S = 0.02


@dataclass
class InFlight:
    """One frame between infer() and its outcome (and, when written, until the server answers it)."""

    frame: pb.Frame
    future: asyncio.Future  # its pb.Result; ClientError when it gets none
    expires: float  # monotonic: its deadline, or the give-up time; the outcome is due by then
    has_deadline: bool
    sent_at: float = 0.0
    attempts: int = 0
    retries: int = 0  # OVERLOADED / UNAVAILABLE answers so far
    not_before: float = 0.0  # monotonic: a frame answered OVERLOADED waits until then
    answered_at: float = 0.0  # monotonic: when its outcome was decided

    @property
    def frame_id(self) -> int:
        return self.frame.frame_id


class FrameLedger:
    def __init__(self) -> None:
        self.inflight: dict[int, InFlight] = {}
        self.unsent: collections.deque[InFlight] = collections.deque()  # in frame order
        self.outstanding: set[int] = set()  # written on the current connection, not answered yet
        self.window = DEFAULT_WINDOW
        self.wake = asyncio.Event()  # a frame to write, or room in the window

    def add(self, frame: pb.Frame, expires: float, has_deadline: bool) -> InFlight:
        entry = InFlight(frame, asyncio.get_running_loop().create_future(), expires, has_deadline)
        self.inflight[frame.frame_id] = entry
        self.unsent.append(entry)
        self.wake.set()
        return entry

    # -- the writer's side -------------------------------------------------------------------
    def next_to_write(self) -> tuple[InFlight | None, float | None]:
        """The next frame to write now, or (None, seconds until one may be ready)."""
        if len(self.outstanding) >= self.window:
            return None, None
        now = time.monotonic()
        soonest = None
        for _ in range(len(self.unsent)):
            entry = self.unsent.popleft()
            if entry.future.done():  # its outcome came while it waited: nothing to send
                self.inflight.pop(entry.frame_id, None)
                continue
            if entry.not_before <= now:
                self.outstanding.add(entry.frame_id)  # holds its place in the window while paced
                return entry, None
            self.unsent.append(entry)  # answered OVERLOADED a moment ago: let others go first
            wait = entry.not_before - now
            soonest = wait if soonest is None else min(soonest, wait)
        return None, soonest

    def too_late(self, entry: InFlight, now: float) -> bool:
        """Whether a frame handed out for writing is of no use any more; if so it is never sent."""
        if not (entry.future.done() or (entry.has_deadline and now >= entry.expires)):
            return False
        self.outstanding.discard(entry.frame_id)
        if entry.future.done():
            self.inflight.pop(entry.frame_id, None)
        return True

    def written(self, entry: InFlight, now: float) -> None:
        entry.attempts += 1
        entry.sent_at = now
        if entry.has_deadline:  # the server counts the budget from arrival: send what is left of it
            entry.frame.deadline_ms = max(1, int((entry.expires - now) * 1e3))

    # -- the reader's side -------------------------------------------------------------------
    def answer(self, result: pb.Result, now: float) -> InFlight | None:
        """Match a result to its frame: the frame it settles, or None (a duplicate, or sent again later)."""
        frame_id = result.frame_id
        if frame_id in self.outstanding:
            self.outstanding.discard(frame_id)
            self.wake.set()
        entry = self.inflight.get(frame_id)
        if entry is None:
            return None  # a duplicate answer to a resent frame: the first one counted
        if result.status in RETRY_STATUSES and not entry.future.done():
            backoff = min(RETRY_BACKOFF_S * 2**entry.retries, 1.0) * random.uniform(0.5, 1.0)
            if now + backoff < entry.expires:  # not now, but there is time: send it again
                entry.retries += 1
                entry.not_before = now + backoff
                self.unsent.append(entry)
                self.wake.set()
                return None
        return self.inflight.pop(frame_id)

    @staticmethod
    def settle(entry: InFlight, result: pb.Result, now: float) -> None:
        """Give the frame its outcome (a result after its deadline is a miss); once only."""
        if entry.future.done():
            return  # its outcome was already decided (its deadline passed)
        entry.answered_at = now
        if entry.has_deadline and now > entry.expires:
            result.status = pb.Result.Status.DEADLINE_EXCEEDED
            result.error = f"the result arrived {(now - entry.expires) * 1e3:.0f} ms after the deadline"
        entry.future.set_result(result)

    # -- the frame's side ---------------------------------------------------------------------
    async def outcome(self, entry: InFlight, lossy: bool) -> pb.Result | None:
        """Wait for the frame's result, at most until it expires (None: it got none in time)."""
        try:
            return await asyncio.wait_for(asyncio.shield(entry.future), max(0.0, entry.expires - time.monotonic()))
        except TimeoutError:
            entry.answered_at = time.monotonic()
            # Decided: a result that still comes is dropped. A frame the server holds stays in
            # flight until it answers, so the window keeps counting it.
            entry.future.cancel()
            if lossy and entry.frame_id in self.outstanding:
                self.outstanding.discard(entry.frame_id)  # it may never be answered: free its place
                self.wake.set()
            if entry.frame_id not in self.outstanding:
                self.inflight.pop(entry.frame_id, None)
            return None

    def pending(self, wire_bytes: Callable[[pb.Frame], int]) -> list[tuple[int, float]]:
        """(wire bytes, send time) of frames written and not answered: the monitor's evidence of a slow link."""
        sent = (self.inflight.get(i) for i in self.outstanding)
        return [(wire_bytes(e.frame), e.sent_at) for e in sent if e is not None and e.sent_at]

    # -- the connection's side ----------------------------------------------------------------
    def requeue(self) -> None:
        """After a break: every frame still waiting for its outcome goes out again on the next connection."""
        self.outstanding.clear()
        waiting = []
        for frame_id, entry in list(self.inflight.items()):
            if entry.future.done():
                self.inflight.pop(frame_id)  # past its deadline: nobody waits for this answer
            else:
                waiting.append(entry)
        self.unsent = collections.deque(sorted(waiting, key=lambda e: e.frame_id))

    def fail_all(self, reason: str) -> None:
        for entry in self.inflight.values():
            if not entry.future.done():
                entry.future.set_exception(ClientError(reason))
        self.inflight.clear()
        self.unsent.clear()
        self.outstanding.clear()
