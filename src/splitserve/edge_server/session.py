"""One device's stream: frames in, results out, in whatever order they finish.

Frames are processed concurrently up to ``max_inflight_per_stream``; a frame
beyond that gets OVERLOADED at once (the device should slow down) rather than
queueing without bound. Results wait to be sent only up to the same number: a
device that writes but does not read is pushed back (the server stops reading
its stream until it reads, and HTTP/2 flow control stops its writes), so one
stream holds a bounded amount of memory whatever it sends. When the server
drains, frames still arriving get UNAVAILABLE, frames already accepted are
answered, and the stream then ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from splitserve.edge_server.inference import InferencePipeline
from splitserve.proto import edge_inference_pb2 as pb

log = logging.getLogger("splitserve.server")
Status = pb.Result.Status
_END = object()
_DRAIN = object()


def _now_us() -> int:
    return time.time_ns() // 1000


class StreamSession:
    def __init__(self, pipeline: InferencePipeline, max_inflight: int, draining: asyncio.Event) -> None:
        self.pipeline = pipeline
        self.max_inflight = max_inflight
        self.draining = draining
        self.inflight = 0
        self._out: asyncio.Queue = asyncio.Queue()
        self._unsent = 0  # results in _out, not yet handed to the transport
        self._room = asyncio.Event()  # set when a result is sent: the reader may read on
        self._tasks: set[asyncio.Task] = set()

    def begin_drain(self) -> None:
        """Called by the server on shutdown: answer what is in flight, then end the stream."""
        self._out.put_nowait(_DRAIN)

    def _answer(self, result: pb.Result) -> None:
        self._unsent += 1
        self._out.put_nowait(result)

    def _reject(self, frame: pb.Frame, status: int, error: str) -> None:
        problem = self.pipeline.field_problem(frame)
        if problem:  # too big to echo: say that instead
            self._answer(self.pipeline.refuse_fields(frame, problem, _now_us(), time.perf_counter()))
            return
        self._answer(pb.Result(frame_id=frame.frame_id, status=status, error=error, model=frame.model, tags=frame.tags))

    async def _process(self, frame: pb.Frame, received_us: int, t0: float) -> None:
        try:
            result = await self.pipeline.infer(frame, received_us, t0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must cost one frame, not the stream
            log.exception("frame %d failed unexpectedly", frame.frame_id)
            result = pb.Result(frame_id=frame.frame_id, status=Status.INTERNAL, error=f"internal error: {exc}")
        self.inflight -= 1
        self._answer(result)

    async def _read(self, frames: AsyncIterator[pb.Frame]) -> None:
        try:
            async for frame in frames:
                t0 = time.perf_counter()
                if self.draining.is_set():
                    self._reject(frame, Status.UNAVAILABLE, "server is shutting down; reconnect to another server")
                    await self._wait_for_room()
                    continue
                if self.inflight >= self.max_inflight:
                    self._reject(
                        frame, Status.OVERLOADED,
                        f"more than {self.max_inflight} frames in flight on this stream; wait for results",
                    )  # fmt: skip
                    await self._wait_for_room()
                    continue
                self.inflight += 1
                task = asyncio.create_task(self._process(frame, _now_us(), t0))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                await self._wait_for_room()
        finally:
            self._out.put_nowait(_END)

    async def _wait_for_room(self) -> None:
        """Push back: read no further frame while the device leaves this many results unread."""
        while self._unsent >= self.max_inflight:
            self._room.clear()
            await self._room.wait()

    async def results(self, frames: AsyncIterator[pb.Frame]) -> AsyncIterator[pb.Result]:
        """Yield one Result per frame read; ends after the device closes its side and all are answered."""
        reader = asyncio.create_task(self._read(frames))
        reading = True
        try:
            while reading or self.inflight or not self._out.empty():
                item = await self._out.get()
                if item is _END or item is _DRAIN:
                    reading = False
                    continue
                yield item
                self._unsent -= 1
                self._room.set()
        finally:
            reader.cancel()
            for task in list(self._tasks):
                task.cancel()
