"""Dynamic batching: decoded frames from every stream, grouped per (model, version, width).

A batch closes when it holds ``max_batch`` frames or its first frame has waited
``max_delay_ms`` (Triton's rule), then runs on the device's worker thread while
the next batch fills. A frame whose deadline passed before its batch starts is
answered DEADLINE_EXCEEDED without being computed; a full queue answers
OVERLOADED at once instead of growing latency without bound. Every frame that
gets into a batcher leaves it with exactly one Outcome, whatever happens.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from splitserve.edge_server.config import BatchingConfig
from splitserve.edge_server.tail import TailRunner
from splitserve.proto import edge_inference_pb2 as pb

log = logging.getLogger("splitserve.server")
Status = pb.Result.Status

# Batches in flight per batcher: one computing, one ready to go.
_PIPELINE_DEPTH = 2


class Overloaded(Exception):
    """The batcher's queue is full."""


@dataclass
class Outcome:
    status: int
    scores: list[float] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    error: str = ""
    queue_ms: float = 0.0
    tail_ms: float = 0.0
    batch_size: int = 0


@dataclass
class Pending:
    tensor: torch.Tensor
    top_k: int
    deadline: float | None  # time.monotonic() by which the tail must start
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, runner: TailRunner, cfg: BatchingConfig) -> None:
        self.runner = runner
        self.cfg = cfg
        self._items: collections.deque[Pending] = collections.deque()
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._slot = asyncio.Event()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = asyncio.create_task(self._dispatch(), name=f"batcher-{runner.name}")
        self.on_batch: Callable[[list[Outcome]], None] | None = None  # called with each batch's outcomes

    def submit(self, tensor: torch.Tensor, top_k: int, deadline: float | None) -> asyncio.Future:
        """Queue one decoded frame; the future resolves to its Outcome."""
        if len(self._items) >= self.cfg.max_queue:
            raise Overloaded(f"{len(self._items)} frames already queued for {self.runner.name}")
        fut = self._loop.create_future()
        self._items.append(Pending(tensor, top_k, deadline, fut))
        self._idle.clear()
        self._wake.set()
        if len(self._items) >= self.cfg.max_batch:
            self._full.set()
        return fut

    async def _dispatch(self) -> None:
        delay = self.cfg.max_delay_ms / 1000.0
        while True:
            while not self._items:
                self._wake.clear()
                await self._wake.wait()
            if delay > 0 and len(self._items) < self.cfg.max_batch:
                self._full.clear()
                oldest = self._items[0].enqueued
                remaining = delay - (time.perf_counter() - oldest)
                if remaining > 0:
                    try:
                        await asyncio.wait_for(self._full.wait(), remaining)
                    except TimeoutError:
                        pass
            while self._inflight >= _PIPELINE_DEPTH:
                self._slot.clear()
                await self._slot.wait()
            n = min(len(self._items), self.cfg.max_batch)
            batch = [self._items.popleft() for _ in range(n)]
            self._inflight += 1
            try:
                future = self.runner.worker.submit(self._run, batch)
            except RuntimeError as exc:  # the worker is shut down: these frames still get their outcome
                self._inflight -= 1
                for item in batch:
                    if not item.future.done():
                        item.future.set_result(Outcome(Status.UNAVAILABLE, error=f"server is stopping ({exc})"))
                if not self._items and not self._inflight:
                    self._idle.set()  # else drain() (and close()) would wait for these frames forever
                continue
            future.add_done_callback(lambda f, b=batch: self._loop.call_soon_threadsafe(self._complete, b, f))

    def _run(self, batch: list[Pending]) -> list[Outcome]:
        """On the device's worker thread."""
        start = time.perf_counter()
        now = time.monotonic()
        outcomes: list[Outcome | None] = [None] * len(batch)
        live = []
        for i, item in enumerate(batch):
            queue_ms = (start - item.enqueued) * 1e3
            if item.deadline is not None and now > item.deadline:
                outcomes[i] = Outcome(
                    Status.DEADLINE_EXCEEDED,
                    error=f"deadline passed while queued ({queue_ms:.1f} ms in queue); not computed",
                    queue_ms=queue_ms,
                )
            else:
                live.append(i)
        if live:
            try:
                top = self.runner.run([batch[i].tensor for i in live], max(batch[i].top_k for i in live))
            except Exception as exc:  # a failed batch fails its frames, never the server
                log.exception("tail failed for %s (batch of %d)", self.runner.name, len(live))
                for i in live:
                    outcomes[i] = Outcome(Status.INTERNAL, error=f"tail computation failed: {exc}")
            else:
                tail_ms = (time.perf_counter() - start) * 1e3
                scores, indices = top.scores.tolist(), top.indices.tolist()
                for row, i in enumerate(live):
                    k = batch[i].top_k
                    outcomes[i] = Outcome(
                        Status.OK,
                        scores=scores[row][:k],
                        indices=indices[row][:k],
                        queue_ms=(start - batch[i].enqueued) * 1e3,
                        tail_ms=tail_ms,
                        batch_size=len(live),
                    )
        return outcomes  # type: ignore[return-value]

    def _complete(self, batch: list[Pending], future: Future) -> None:
        """Back on the event loop: hand each frame its outcome."""
        self._inflight -= 1
        self._slot.set()
        try:
            outcomes = future.result()
        except Exception as exc:  # the worker itself failed (e.g. shut down)
            outcomes = [Outcome(Status.INTERNAL, error=f"worker failed: {exc}") for _ in batch]
        for item, outcome in zip(batch, outcomes, strict=True):
            if not item.future.done():
                item.future.set_result(outcome)
        if self.on_batch is not None:
            self.on_batch(outcomes)
        if not self._items and not self._inflight:
            self._idle.set()

    async def drain(self) -> None:
        """Wait until every queued frame has its outcome."""
        await self._idle.wait()

    async def close(self) -> None:
        await self.drain()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
