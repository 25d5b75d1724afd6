"""One frame through the server, top to bottom: resolve the model, route, batch, decode, compute, answer.

    Frame -> repository.resolve (model version) -> ServedModel.route (codec, width -> batch key)
          -> Batcher.submit -> decoder.decode_batch (decode pool, a batch at once)
          -> TailRunner.run (worker thread) -> Result

Whatever goes wrong with a frame becomes that frame's Result status; nothing
here raises past ``infer`` except cancellation.
"""

from __future__ import annotations

import asyncio
import logging
import time

from splitserve.codecs import CodecError
from splitserve.edge_server.batcher import Outcome, Overloaded
from splitserve.edge_server.config import ServerConfig
from splitserve.edge_server.metrics import UNKNOWN, ServerMetrics
from splitserve.edge_server.repository import InvalidRoute, ModelRepository, UnknownModel
from splitserve.proto import edge_inference_pb2 as pb

log = logging.getLogger("splitserve.server")
Status = pb.Result.Status
# A result echoes the frame's model, version and tags: bounded, so no frame can make its result big.
MAX_NAME_CHARS = 256


class InferencePipeline:
    def __init__(self, repository: ModelRepository, cfg: ServerConfig) -> None:
        self.repository = repository
        self.cfg = cfg
        self.metrics: ServerMetrics | None = None  # set by the server when metrics are on
        self._failures_seen: set[str] = set()

    async def infer(self, frame: pb.Frame, received_us: int, t0: float) -> pb.Result:
        """The Result for one frame. ``t0`` is time.perf_counter() when it was read off the wire."""
        m = self.metrics
        if m is None:
            return (await self._guarded(frame, received_us, t0))[0]
        m.inflight.inc()
        try:
            result, labels = await self._guarded(frame, received_us, t0)
        finally:
            m.inflight.dec()
        m.frames_received.labels(*labels).inc()
        m.bytes_received.labels(*labels).inc(len(frame.payload))
        m.frames_completed.labels(*labels, Status.Name(result.status)).inc()
        t = result.timings
        m.latency.labels(*labels).observe(t.total_ms / 1e3)
        if result.status == Status.OK:
            m.decode.labels(*labels).observe(t.decode_ms / 1e3)
            m.queue.labels(*labels).observe(t.queue_ms / 1e3)
        return result

    async def _guarded(self, frame: pb.Frame, received_us: int, t0: float) -> tuple[pb.Result, tuple[str, str, str]]:
        """A bug costs one frame an INTERNAL result (on Infer and Stream alike), never the call.

        Frames come from anyone, so the log stays short: a traceback for the first failure of
        each kind, one line for every repeat.
        """
        try:
            return await self._infer(frame, received_us, t0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
            first = kind not in self._failures_seen
            self._failures_seen.add(kind)
            log.error("frame %d failed unexpectedly: %s: %.200s", frame.frame_id, kind, exc, exc_info=first)
            error = f"internal error ({type(exc).__name__}); the server log has the details"
            return self._fail(frame, Status.INTERNAL, error, received_us, t0), (UNKNOWN, UNKNOWN, UNKNOWN)

    def field_problem(self, frame: pb.Frame) -> str:
        """Why the frame's echoed fields are too big to answer in kind ("" when they are fine)."""
        if len(frame.model) > MAX_NAME_CHARS or len(frame.version) > MAX_NAME_CHARS:
            return f"model name or version longer than {MAX_NAME_CHARS} characters"
        if frame.tags:
            size = sum(len(k.encode()) + len(v.encode()) for k, v in frame.tags.items())
            if size > self.cfg.max_tags_bytes:
                return f"tags of {size} bytes exceed this server's limit of {self.cfg.max_tags_bytes}"
        return ""

    def refuse_fields(self, frame: pb.Frame, problem: str, received_us: int, t0: float) -> pb.Result:
        """INVALID_FRAME for a frame whose fields are too big, echoing none of them."""
        return pb.Result(
            frame_id=frame.frame_id,
            status=Status.INVALID_FRAME,
            error=problem,
            timings=pb.ServerTimings(received_unix_us=received_us, total_ms=(time.perf_counter() - t0) * 1e3),
        )

    def _fail(self, frame: pb.Frame, status: int, error: str, received_us: int, t0: float) -> pb.Result:
        return pb.Result(
            frame_id=frame.frame_id,
            status=status,
            error=error,
            model=frame.model,
            version=frame.version,
            width=frame.width,
            tags=frame.tags,
            timings=pb.ServerTimings(received_unix_us=received_us, total_ms=(time.perf_counter() - t0) * 1e3),
        )

    async def _infer(self, frame: pb.Frame, received_us: int, t0: float) -> tuple[pb.Result, tuple[str, str, str]]:
        """(Result, metric labels). Labels only ever name what the repository serves."""
        received_mono = time.monotonic() - (time.perf_counter() - t0)
        problem = self.field_problem(frame)
        if problem:
            return self.refuse_fields(frame, problem, received_us, t0), (UNKNOWN, UNKNOWN, UNKNOWN)
        try:
            served = self.repository.resolve(frame.model, frame.version, frame.bundle_sha256)
        except UnknownModel as exc:
            return self._fail(frame, Status.UNKNOWN_MODEL, str(exc), received_us, t0), (UNKNOWN, UNKNOWN, UNKNOWN)
        bundle = served.bundle
        try:
            route = served.route(frame.codec, frame.width)
        except InvalidRoute as exc:
            result = self._fail(frame, Status.INVALID_FRAME, str(exc), received_us, t0)
            return result, (bundle.name, bundle.version, "invalid")
        labels = (bundle.name, bundle.version, route.key.label)
        if len(frame.payload) > self.cfg.max_frame_bytes:
            return self._fail(
                frame, Status.INVALID_FRAME,
                f"payload of {len(frame.payload)} bytes exceeds this server's limit of {self.cfg.max_frame_bytes}",
                received_us, t0,
            ), labels  # fmt: skip
        try:
            route.decoder.check_shape(frame.shape)  # the payload itself is decoded with its batch
        except CodecError as exc:
            return self._fail(frame, Status.INVALID_FRAME, str(exc), received_us, t0), labels

        deadline = received_mono + frame.deadline_ms / 1000.0 if frame.deadline_ms else None
        top_k = frame.top_k or self.cfg.default_top_k
        try:
            outcome: Outcome = await route.batcher.submit(frame.payload, route.decoder, top_k, deadline)
        except Overloaded as exc:
            result = self._fail(frame, Status.OVERLOADED, f"server overloaded: {exc}; retry later", received_us, t0)
            return result, labels

        names = bundle.labels
        result = pb.Result(
            frame_id=frame.frame_id,
            status=outcome.status,
            error=outcome.error,
            model=bundle.name,
            version=bundle.version,
            width=route.key.width,
            tags=frame.tags,
            top_k=[
                pb.ClassScore(index=i, label=names[i] if i < len(names) else str(i), score=s)
                for i, s in zip(outcome.indices, outcome.scores, strict=True)
            ],
            timings=pb.ServerTimings(
                received_unix_us=received_us,
                decode_ms=outcome.decode_ms,
                queue_ms=outcome.queue_ms,
                tail_ms=outcome.tail_ms,
                batch_size=outcome.batch_size,
                total_ms=(time.perf_counter() - t0) * 1e3,
            ),
        )
        return result, labels
