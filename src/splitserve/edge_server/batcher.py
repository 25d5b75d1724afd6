"""Dynamic batching: frames from every stream, grouped per (model, version, width), decoded and
computed a batch at a time.

A batch closes when it holds ``max_batch`` frames or its first frame has waited
``max_delay_ms`` (Triton's rule). Its payloads are decoded together on the decode
pool (an entropic batch in one call outside the GIL), then its tail runs on the
device's worker thread; the next batch decodes while this one computes. A frame
whose deadline passed before its batch starts is answered DEADLINE_EXCEEDED without
being decoded or computed; an undecodable payload is answered INVALID_FRAME alone; a
full queue answers OVERLOADED at once instead of growing latency without bound.
Every frame that gets into a batcher leaves it with exactly one Outcome, whatever
happens.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from splitserve.codecs import Decoder
from splitserve.edge_server.config import BatchingConfig
from splitserve.edge_server.tail import TailRunner, fixed_batch_sizes
from splitserve.proto import edge_inference_pb2 as pb

log = logging.getLogger("splitserve.server")
Status = pb.Result.Status

# Batches in flight per batcher: one computing, one decoding or ready to go.
_PIPELINE_DEPTH = 2


class BatchSizer:
    """How many frames a batch takes when more are waiting: measured, not assumed.

    Bigger is not always faster. On a 2-core CPU lite0-imagenet's widest tail costs 11.7 ms of CPU
    a frame at batch 8 and 17.6 ms at batch 32 (its activations leave the cache), while fmnist's
    costs 0.35 and 0.26 ms; a GPU wants the largest batch. So each batcher keeps, per size in
    ``fixed_batch_sizes(max_batch)``, a moving average of the tail's time per frame. The first
    time frames back up it runs one batch of every size, then the fastest size; every
    ``probe_every`` saturated batches it runs a neighbouring size once to follow changes, and it
    moves to whichever size is at least ``gain`` faster than its own. Without a backlog a batch
    takes whatever is waiting (and its size does not matter).
    """

    def __init__(self, max_batch: int, probe_every: int = 16, gain: float = 0.1, smoothing: float = 0.3) -> None:
        self.sizes = fixed_batch_sizes(max_batch)
        self.index = len(self.sizes) - 1
        self.probe_every = probe_every
        self.gain = gain
        self.smoothing = smoothing
        self.ms_per_frame: dict[int, float] = {}
        self._saturated = 0
        self._probe_down = True

    @property
    def size(self) -> int:
        return self.sizes[self.index]

    def take(self, waiting: int) -> int:
        """Frames the next batch takes out of ``waiting``."""
        if waiting < self.size:
            return waiting
        self._saturated += 1
        unmeasured = [s for s in self.sizes if s not in self.ms_per_frame and s <= waiting]
        if unmeasured:
            return unmeasured[-1]
        if self._saturated % self.probe_every == 0:
            self._probe_down = not self._probe_down
            i = self.index + (-1 if self._probe_down else 1)
            if 0 <= i < len(self.sizes) and self.sizes[i] <= waiting:
                return self.sizes[i]
        return self.size

    def observe(self, frames: int, tail_ms: float) -> None:
        """A batch of ``frames`` took ``tail_ms`` on the tail; moves to a size measured faster."""
        if frames not in self.sizes or tail_ms <= 0:
            return
        per_frame = tail_ms / frames
        old = self.ms_per_frame.get(frames)
        self.ms_per_frame[frames] = per_frame if old is None else old + self.smoothing * (per_frame - old)
        best = min(self.ms_per_frame, key=self.ms_per_frame.__getitem__)
        here = self.ms_per_frame.get(self.size)
        if here is None or self.ms_per_frame[best] < here * (1 - self.gain):
            self.index = self.sizes.index(best)


class Overloaded(Exception):
    """The batcher's queue is full."""


@dataclass
class Outcome:
    status: int
    scores: list[float] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    error: str = ""
    queue_ms: float = 0.0
    decode_ms: float = 0.0
    tail_ms: float = 0.0
    batch_size: int = 0


@dataclass
class Pending:
    payload: bytes
    decoder: Decoder  # the frame's codec at this batch key's shape (frames of one batch may differ in codec)
    top_k: int
    deadline: float | None  # time.monotonic() by which the tail must start
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class Decoded:
    """A batch after the decode pool: the tail's input rows and who they belong to."""

    inputs: np.ndarray  # (len(rows), *payload shape)
    rows: list[int]  # the batch index of each input row
    outcomes: list[Outcome | None]  # per batch index: already answered (expired, undecodable) or None
    decode_ms: float


class Batcher:
    def __init__(self, runner: TailRunner, cfg: BatchingConfig, decode_pool: Executor | None = None) -> None:
        self.runner = runner
        self.cfg = cfg
        self.decode_pool = decode_pool  # None: the event loop's default executor
        self._items: collections.deque[Pending] = collections.deque()
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._slot = asyncio.Event()
        self._running = 0  # batches taken off the queue and not yet answered
        self._tasks: set[asyncio.Task] = set()  # their tasks, referenced until they end
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = asyncio.create_task(self._dispatch(), name=f"batcher-{runner.name}")
        self.on_batch: Callable[[list[Outcome]], None] | None = None  # called with each batch's outcomes
        self.sizer = BatchSizer(cfg.max_batch)

    def submit(self, payload: bytes, decoder: Decoder, top_k: int, deadline: float | None) -> asyncio.Future:
        """Queue one frame's payload; the future resolves to its Outcome."""
        if len(self._items) >= self.cfg.max_queue:
            raise Overloaded(f"{len(self._items)} frames already queued for {self.runner.name}")
        fut = self._loop.create_future()
        self._items.append(Pending(payload, decoder, top_k, deadline, fut))
        self._idle.clear()
        self._wake.set()
        if len(self._items) >= self.sizer.size:
            self._full.set()
        return fut

    async def _dispatch(self) -> None:
        delay = self.cfg.max_delay_ms / 1000.0
        while True:
            while not self._items:
                self._wake.clear()
                await self._wake.wait()
            if delay > 0 and len(self._items) < self.sizer.size:
                self._full.clear()
                oldest = self._items[0].enqueued
                remaining = delay - (time.perf_counter() - oldest)
                if remaining > 0:
                    try:
                        await asyncio.wait_for(self._full.wait(), remaining)
                    except TimeoutError:
                        pass
            while self._running >= _PIPELINE_DEPTH:
                self._slot.clear()
                await self._slot.wait()
            batch = [self._items.popleft() for _ in range(self.sizer.take(len(self._items)))]
            self._running += 1
            task = asyncio.create_task(self._process(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _process(self, batch: list[Pending]) -> None:
        """Decode on the pool, compute on the worker, answer on the loop: one Outcome per frame."""
        try:
            decoded = await self._loop.run_in_executor(self.decode_pool, self._decode, batch)
            outcomes = await asyncio.wrap_future(self.runner.worker.submit(self._run, batch, decoded))
        except RuntimeError as exc:  # a pool or the worker is shut down: these frames still get their outcome
            outcomes = [Outcome(Status.UNAVAILABLE, error=f"server is stopping ({exc})") for _ in batch]
        except Exception as exc:  # noqa: BLE001 - whatever failed, every frame is answered
            log.exception("batch of %d failed for %s", len(batch), self.runner.name)
            outcomes = [Outcome(Status.INTERNAL, error=f"batch failed: {exc}") for _ in batch]
        done = next((o for o in outcomes if o.batch_size), None)
        if done is not None:
            self.sizer.observe(done.batch_size, done.tail_ms)
        self._complete(batch, outcomes)

    def _decode(self, batch: list[Pending]) -> Decoded:
        """On the decode pool: every live frame's payload into one array, frames of a codec together."""
        start = time.perf_counter()
        outcomes = self._expired(batch, start)
        live = sorted((i for i, o in enumerate(outcomes) if o is None), key=lambda i: id(batch[i].decoder))
        inputs = np.empty((len(live), *self.runner.input_shape), dtype=self.runner.key.kind.dtype)
        problems: list[str] = []
        for decoder, rows in itertools.groupby(live, key=lambda i: batch[i].decoder):  # one call per codec
            payloads = [batch[i].payload for i in rows]
            problems += decoder.decode_batch(payloads, inputs[len(problems) : len(problems) + len(payloads)])
        decode_ms = (time.perf_counter() - start) * 1e3
        if any(problems):
            for i, problem in zip(live, problems, strict=True):
                if problem:
                    outcomes[i] = Outcome(Status.INVALID_FRAME, error=problem, decode_ms=decode_ms)
            inputs = inputs[[not p for p in problems]]
            live = [i for i, p in zip(live, problems, strict=True) if not p]
        return Decoded(inputs, live, outcomes, decode_ms)

    @staticmethod
    def _expired(batch: list[Pending], start: float) -> list[Outcome | None]:
        """DEADLINE_EXCEEDED for each frame whose deadline has passed, None for the others."""
        now = time.monotonic()
        outcomes: list[Outcome | None] = []
        for item in batch:
            queue_ms = (start - item.enqueued) * 1e3
            late = item.deadline is not None and now > item.deadline
            outcomes.append(
                Outcome(
                    Status.DEADLINE_EXCEEDED,
                    error=f"deadline passed while queued ({queue_ms:.1f} ms in queue); not computed",
                    queue_ms=queue_ms,
                )
                if late
                else None
            )
        return outcomes

    def _run(self, batch: list[Pending], decoded: Decoded) -> list[Outcome]:
        """On the device's worker thread: the tail over every frame still in time."""
        start = time.perf_counter()
        outcomes = decoded.outcomes
        late = self._expired([batch[i] for i in decoded.rows], start)  # the previous batch may have run long
        keep = [o is None for o in late]
        inputs = decoded.inputs if all(keep) else decoded.inputs[keep]
        live = []
        for i, outcome in zip(decoded.rows, late, strict=True):
            if outcome is None:
                live.append(i)
            else:
                outcomes[i] = outcome
        if live:
            try:
                top = self.runner.run(inputs, max(batch[i].top_k for i in live))
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
                        queue_ms=(start - batch[i].enqueued) * 1e3 - decoded.decode_ms,
                        decode_ms=decoded.decode_ms,
                        tail_ms=tail_ms,
                        batch_size=len(live),
                    )
        return outcomes  # type: ignore[return-value]

    def _complete(self, batch: list[Pending], outcomes: list[Outcome]) -> None:
        """Back on the event loop: hand each frame its outcome."""
        self._running -= 1
        self._slot.set()
        for item, outcome in zip(batch, outcomes, strict=True):
            if not item.future.done():
                item.future.set_result(outcome)
        if self.on_batch is not None:
            self.on_batch(outcomes)
        if not self._items and not self._running:
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
