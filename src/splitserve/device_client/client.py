"""SplitClient: run the head here, the tail on an edge server, over one gRPC stream or a WebRTC datachannel.

    with SplitClient("edge.local:50051", "fmnist-split", policy="adaptive", deadline_ms=150) as client:
        prediction = client.infer(frame)          # uint8 (H, W, C)
        print(prediction.label, prediction.latency_ms, prediction.width)

``AsyncSplitClient`` is the same for asyncio code. Several ``infer`` calls may be
in flight at once: the head of the next frame runs while the previous one is on
the wire, and results are matched to frames by id (they may return out of order).

Every frame ends with exactly one Prediction, by its deadline (or, without one,
by the client's give-up time), whatever the server or the link does: a timer per
frame ends it, not the stream. The transport (``transports/``: gRPC, WebRTC)
only carries frames and results; all of this holds the same on each. A result that arrives after the deadline is a miss
(DEADLINE_EXCEEDED). If the stream breaks, the client reconnects with exponential
backoff and jitter; frames that had no result yet are sent again on the new
stream while their deadline allows. Frames are written within the server's
per-stream window (it says its size when the stream opens), and a frame answered
OVERLOADED is sent again after a short wait while its deadline allows. A frame
never disappears silently.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from splitserve.codecs import codec_kind
from splitserve.device_client.bandwidth import BandwidthMonitor
from splitserve.device_client.bundles import fetch_device_files, local_bundle
from splitserve.device_client.channel import ChannelSettings, aio_channel, explain_tls_failure
from splitserve.device_client.head import EncodedFrame, HeadRunner
from splitserve.device_client.policy import Decision, FramePlanner, Policy, WidthCost, make_policy, manifest_accuracy
from splitserve.device_client.runtimes import RuntimeUnavailable
from splitserve.device_client.transports import Connection, Transport, TransportError, make_transport
from splitserve.device_client.transports.base import DEFAULT_WINDOW
from splitserve.device_client.transports.grpc import GRPC_FRAMING
from splitserve.models.coding import CodingBundle
from splitserve.models.manifest import BundleError
from splitserve.models.zoo import DEFAULT_MODEL
from splitserve.proto import edge_inference_pb2 as pb
from splitserve.proto import edge_inference_pb2_grpc as pb_grpc

if TYPE_CHECKING:  # the SDK imports torch only when the torch runtime is chosen
    import torch

log = logging.getLogger("splitserve.device")
# Results that mean "not now": the frame is sent again while its deadline allows.
RETRY_STATUSES = (pb.Result.Status.OVERLOADED, pb.Result.Status.UNAVAILABLE)
RETRY_BACKOFF_S = 0.02


def wire_bytes(frame: pb.Frame) -> int:
    """Bytes a frame puts on a gRPC stream (TCP payload), payload and message framing included."""
    return frame.ByteSize() + GRPC_FRAMING


def frame_overhead(bundle: CodingBundle, codec: str, width: int) -> int:
    """Bytes a Frame of this model, codec and width puts on the link besides its payload.

    Measured on a Frame filled as the client fills one (ids, model, bundle sha256, shape,
    timestamps at their widest), so the policy and the simulator plan with the real size.
    """
    shape = bundle.payload_shape(codec, width)
    frame = pb.Frame(
        frame_id=1 << 20, model=bundle.name, version=bundle.version, bundle_sha256=bundle.sha256, codec=codec,
        width=width, payload=b"", shape=list(shape), capture_time_us=time.time_ns() // 1000, deadline_ms=150, top_k=5,
    )  # fmt: skip
    return frame.ByteSize() + 3 + GRPC_FRAMING  # +3: the payload field's tag and length


def status_name(status: int) -> str:
    """A Result status as its proto name (the number, for a status this client does not know)."""
    return pb.Result.Status.Name(status) if status in pb.Result.Status.values() else str(status)


class ClientError(RuntimeError):
    """The client cannot reach or use the server; the message says what to check."""


@dataclass
class ClassScore:
    index: int
    label: str
    score: float


@dataclass
class Prediction:
    frame_id: int
    status: str  # a Result status name, or FAILED when the frame never got a result
    top_k: list[ClassScore] = field(default_factory=list)
    codec: str = ""
    width: int = 0
    payload_bytes: int = 0
    device_ms: float = 0.0  # compute on this device: head + encoding, or the whole model for a local frame
    latency_ms: float = 0.0  # from infer() to the result, head included
    server: dict[str, float] = field(default_factory=dict)
    error: str = ""
    local: bool = False  # computed on the device, no server involved
    attempts: int = 0  # times the frame was sent (more than 1 after a reconnect)
    bandwidth_bps: float | None = None  # the link estimate when the frame was planned
    rtt_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    @property
    def index(self) -> int | None:
        return self.top_k[0].index if self.top_k else None

    @property
    def label(self) -> str | None:
        return self.top_k[0].label if self.top_k else None


def _timings(t: pb.ServerTimings) -> dict[str, float]:
    return {
        "decode_ms": t.decode_ms,
        "queue_ms": t.queue_ms,
        "tail_ms": t.tail_ms,
        "total_ms": t.total_ms,
        "batch_size": float(t.batch_size),
    }


@dataclass
class _InFlight:
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


class AsyncSplitClient:
    def __init__(
        self,
        server: str,
        model: str = DEFAULT_MODEL,
        *,
        version: str = "",
        channel: ChannelSettings | None = None,
        fetch: bool = False,
        codec: str = "entropic",
        width: int = -1,
        policy: str | Policy | None = None,
        deadline_ms: int = 0,
        top_k: int = 5,
        image_quality: int = 75,
        head_threads: int | None = None,
        runtime: str = "auto",
        slowdown: float = 1.0,
        connect_timeout: float = 15.0,
        max_backoff_s: float = 5.0,
        give_up_s: float = 30.0,
        transport: str = "grpc",
        transport_options: dict[str, Any] | None = None,
    ) -> None:
        self.settings = channel or ChannelSettings(target=server)
        self.settings.target = server
        self.model = model
        self.version = version
        self.fetch = fetch
        self.codec = codec
        self.width = width
        self.policy_spec = policy
        self.deadline_ms = deadline_ms
        self.top_k = top_k
        self.image_quality = image_quality
        self.head_threads = head_threads
        self.runtime = runtime  # the head's: torch | onnx | auto (see device_client.runtimes)
        self.slowdown = max(1.0, float(slowdown))
        self.connect_timeout = connect_timeout
        self.max_backoff_s = max_backoff_s
        self.give_up_s = give_up_s
        self.transport_name = transport
        self.transport_options = dict(transport_options or {})
        self.transport: Transport | None = None
        self.bundle: Any = None  # a CodingBundle; the full torch Bundle with the torch runtime
        self.head: HeadRunner | None = None
        self.policy: Policy | None = None
        self.monitor = BandwidthMonitor()
        self.planner: FramePlanner | None = None  # the policy and the monitor, fed back per frame
        self._probes: set[asyncio.Task] = set()
        self.reconnects = 0
        self._ids = itertools.count(1)
        # every frame without its outcome yet, and every frame the server has not answered yet
        self._inflight: dict[int, _InFlight] = {}
        self._unsent: collections.deque[_InFlight] = collections.deque()  # in frame order
        self._outstanding: set[int] = set()  # written on the current stream, not answered yet
        self._window = DEFAULT_WINDOW
        self._wake = asyncio.Event()  # a frame to write, or room in the window
        self._link_note = "not connected yet"  # why the stream is down, for the frames that wait
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.EdgeInferenceStub | None = None
        self._conn: Connection | None = None
        self._connected = asyncio.Event()
        self._tried = asyncio.Event()  # the first connection opened, or failed to
        self._closing = False
        self._supervisor: asyncio.Task | None = None
        self._head_pool = ThreadPoolExecutor(1, thread_name_prefix="head")

    async def __aenter__(self) -> AsyncSplitClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- connection --------------------------------------------------------
    async def connect(self) -> None:
        """Reach the server, get the bundle (local, or GetHead), open the stream."""
        self._channel = aio_channel(self.settings)
        self._stub = pb_grpc.EdgeInferenceStub(self._channel)
        try:
            await asyncio.wait_for(self._channel.channel_ready(), self.connect_timeout)
        except TimeoutError:
            await self._channel.close()
            why = ""
            if self.settings.uses_tls:  # gRPC only says "not ready": find out what the handshake says
                why = ": " + await asyncio.to_thread(explain_tls_failure, self.settings)
            raise ClientError(
                f"cannot reach the edge server at {self.settings.target} within {self.connect_timeout:.0f} s{why}"
            ) from None
        try:
            bundle = None if self.fetch else local_bundle(self.model, self.version)
        except BundleError as exc:  # this device's copy is damaged: never fall back to it silently
            raise ClientError(f"the bundle of {self.model!r} on this device is unusable: {exc}") from None
        if bundle is None:
            try:
                bundle = await fetch_device_files(self._stub, self.model, self.version, self.settings.metadata())
            except grpc.aio.AioRpcError as exc:
                raise ClientError(f"cannot fetch the head of {self.model!r}: {exc.details()}") from None
            except BundleError as exc:  # what the server sent is unsafe or corrupt: nothing was used
                raise ClientError(f"cannot fetch the head of {self.model!r}: {exc}") from None
        try:
            self.head = HeadRunner(bundle, self.head_threads, self.runtime)
        except (RuntimeUnavailable, BundleError, ValueError) as exc:
            await self._channel.close()
            raise ClientError(f"cannot run the head of {bundle.name}:{bundle.version}: {exc}") from None
        problem = self.head.runtime.cannot(self.codec, local=self.policy_spec == "local")
        if problem:
            await self._channel.close()
            raise ClientError(f"{bundle.name}:{bundle.version}: {problem}")
        self.bundle = self.head.bundle
        self.policy = self._make_policy()
        self.planner = FramePlanner(self.policy, self.monitor) if self.policy is not None else None
        try:
            self.transport = make_transport(
                self.transport_name, self._stub, self.settings, self._link_rate, **self._transport_defaults()
            )
        except (ValueError, TypeError) as exc:
            await self._channel.close()
            raise ClientError(str(exc)) from None
        self._supervisor = asyncio.create_task(self._supervise(), name="splitclient-stream")
        # a WebRTC connection takes a few round trips (ICE, DTLS, SCTP): let the first frame find it open
        try:
            await asyncio.wait_for(asyncio.shield(self._tried.wait()), self.connect_timeout)
        except TimeoutError:
            pass  # frames wait for it (or for their deadline) like after a break

    def _transport_defaults(self) -> dict[str, Any]:
        """Options the transport gets unless the caller set them: a datachannel keeps frames for their deadline."""
        options = dict(self.transport_options)
        if self.transport_name == "webrtc" and self.deadline_ms:
            options.setdefault("deadline_ms", self.deadline_ms)
        return options

    def _link_rate(self) -> float | None:
        """The bandwidth estimate (bit/s), for a transport that paces its sends."""
        return self.monitor.estimate(self._pending()).bandwidth_bps

    def _make_policy(self) -> Policy | None:
        spec = self.policy_spec
        if spec is None or isinstance(spec, Policy):
            return spec
        assert self.bundle is not None and self.head is not None
        costs = [
            WidthCost(
                bytes=float(w.get("bytes_mean") or 1000.0) + frame_overhead(self.bundle, "entropic", i),
                head_ms=float(w.get("head_ms") or 1.0) * self.slowdown,
                accuracy=manifest_accuracy(w),
            )
            for i, w in enumerate(self.bundle.widths)
        ]
        local_ms = self.measure_local_ms() if self.head.runtime.runs_locally() else None
        return make_policy(spec, costs, local_ms)

    def measure_local_ms(self, repeat: int = 5) -> float:
        """Local-only inference time on this device (slowdown applied), for the policy's fallback."""
        assert self.head is not None and self.bundle is not None
        frame = np.zeros(self.bundle.input.image_shape, dtype=np.uint8)
        self.head.infer_whole(frame)
        return float(np.median([self.head.infer_whole(frame)[1] for _ in range(repeat)])) * self.slowdown

    async def _supervise(self) -> None:
        """Keep one stream open: reopen it with backoff and jitter whenever it breaks.

        Frames never wait on this loop: each has its own timer (see ``_send``), so a
        server that dies and never comes back costs each frame its deadline, no more.
        """
        attempt = 0
        while not self._closing:
            reason, answered = await self._run_connection()
            self._connected.clear()
            self._link_note = f"the stream to {self.settings.target} broke ({reason})"
            if self._closing:
                break
            attempt = 0 if answered else attempt + 1
            self._requeue()
            delay = min(self.max_backoff_s, 0.1 * 2**attempt) * random.uniform(0.5, 1.0)
            log.warning("stream to %s broke (%s); reconnecting in %.2f s", self.settings.target, reason, delay)
            self.reconnects += 1
            await asyncio.sleep(delay)
        self._fail_all("the client closed")

    async def _run_connection(self) -> tuple[str, bool]:
        """One connection, from the server's hello (its window) until it ends: (why it ended, any results?)."""
        assert self.transport is not None
        try:
            conn = await self.transport.open()
        except TransportError as exc:
            return str(exc), False
        finally:
            self._tried.set()
        self._conn = conn
        if self._closing:  # closed while it opened: nothing will be written on it
            await conn.close(graceful=False)
            return "the client closed", False
        self._window = conn.window
        self._connected.set()
        writer = asyncio.create_task(self._pump(conn), name="splitclient-writer")
        answered = False
        try:
            async for result in conn.results():
                answered = True
                self._on_result(result)
            return "the server ended the stream", answered
        except TransportError as exc:
            return str(exc), answered
        except asyncio.CancelledError:
            return "cancelled", answered
        finally:
            writer.cancel()

    async def _pump(self, conn: Connection) -> None:
        """Write frames in order, never more unanswered ones than the server's window holds.

        A transport that paces (WebRTC) may hold a frame back; one whose deadline passes
        meanwhile is not sent at all: its timer gives it its one outcome.
        """
        while True:
            entry, wait = self._next_to_write()
            if entry is None:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except TimeoutError:
                    pass
                continue
            self._outstanding.add(entry.frame.frame_id)  # holds its place in the window while paced
            await conn.pace(self._wire_bytes(entry.frame))
            now = time.monotonic()
            if entry.future.done() or (entry.has_deadline and now >= entry.expires):
                self._outstanding.discard(entry.frame.frame_id)  # too late to be of use: never sent
                if entry.future.done():
                    self._inflight.pop(entry.frame.frame_id, None)
                continue
            entry.attempts += 1
            entry.sent_at = now
            if entry.has_deadline:  # the server counts the budget from arrival: send what is left of it
                entry.frame.deadline_ms = max(1, int((entry.expires - now) * 1e3))
            try:
                await conn.send(entry.frame)
            except TransportError as exc:
                # the connection broke: the supervisor sends the frame again on the next one
                log.warning("sending frame %d failed (%s); it goes again on the next connection",
                            entry.frame.frame_id, exc)  # fmt: skip
                return

    def _next_to_write(self) -> tuple[_InFlight | None, float | None]:
        """The next frame to write now, or (None, seconds until one may be ready)."""
        if len(self._outstanding) >= self._window:
            return None, None
        now = time.monotonic()
        soonest = None
        for _ in range(len(self._unsent)):
            entry = self._unsent.popleft()
            if entry.future.done():  # its outcome came while it waited: nothing to send
                self._inflight.pop(entry.frame.frame_id, None)
                continue
            if entry.not_before <= now:
                return entry, None
            self._unsent.append(entry)  # answered OVERLOADED a moment ago: let others go first
            wait = entry.not_before - now
            soonest = wait if soonest is None else min(soonest, wait)
        return None, soonest

    def _on_result(self, result: pb.Result) -> None:
        frame_id = result.frame_id
        if frame_id in self._outstanding:
            self._outstanding.discard(frame_id)
            self._wake.set()
        entry = self._inflight.get(frame_id)
        if entry is None:
            return  # a duplicate answer to a resent frame: the first one counted
        now = time.monotonic()
        if result.status in RETRY_STATUSES and not entry.future.done():
            backoff = min(RETRY_BACKOFF_S * 2**entry.retries, 1.0) * random.uniform(0.5, 1.0)
            if now + backoff < entry.expires:  # not now, but there is time: send it again
                entry.retries += 1
                entry.not_before = now + backoff
                self._unsent.append(entry)
                self._wake.set()
                return
        self._inflight.pop(frame_id)
        # a late result still measures the link, and so does a frame the server found late on arrival
        if result.status in (pb.Result.Status.OK, pb.Result.Status.DEADLINE_EXCEEDED):
            elapsed_ms = (now - entry.sent_at) * 1e3
            if self.planner is not None:
                self.planner.result(self._wire_bytes(entry.frame), elapsed_ms, result.timings.total_ms)
            else:
                self.monitor.add(self._wire_bytes(entry.frame), elapsed_ms, result.timings.total_ms)
        if entry.future.done():
            return  # its outcome was already decided (its deadline passed)
        entry.answered_at = now
        if entry.has_deadline and now > entry.expires:
            late_ms = (now - entry.expires) * 1e3
            result.status = pb.Result.Status.DEADLINE_EXCEEDED
            result.error = f"the result arrived {late_ms:.0f} ms after the deadline"
        entry.future.set_result(result)

    def _requeue(self) -> None:
        """After a break: every frame still waiting for its outcome goes out again on the next stream."""
        self._outstanding.clear()
        waiting = []
        for frame_id, entry in list(self._inflight.items()):
            if entry.future.done():
                self._inflight.pop(frame_id)  # past its deadline: nobody waits for this answer
            else:
                waiting.append(entry)
        self._unsent = collections.deque(sorted(waiting, key=lambda e: e.frame.frame_id))

    def _fail_all(self, reason: str) -> None:
        for entry in self._inflight.values():
            if not entry.future.done():
                entry.future.set_exception(ClientError(reason))
        self._inflight.clear()
        self._unsent.clear()
        self._outstanding.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- frames ------------------------------------------------------------
    async def encode(self, image: np.ndarray | torch.Tensor, codec: str, width: int) -> EncodedFrame:
        assert self.head is not None, "call connect() first"
        loop = asyncio.get_running_loop()
        enc = await loop.run_in_executor(self._head_pool, self.head.encode, image, codec, width, self.image_quality)
        if self.slowdown > 1:  # emulate a slower device: the head takes slowdown x as long
            extra = enc.head_ms * (self.slowdown - 1)
            await asyncio.sleep(extra / 1e3)
            enc.head_ms += extra
        return enc

    def plan(self, deadline_ms: float) -> Decision:
        """What the policy would do with the next frame, given what the link looks like now."""
        if self.planner is None:
            return Decision(local=False, width=self.width)
        return self.planner.plan(deadline_ms, self.connected, self._pending())[0]

    def _wire_bytes(self, frame: pb.Frame) -> int:
        return self.transport.wire_bytes(frame) if self.transport is not None else wire_bytes(frame)

    def _pending(self) -> list[tuple[int, float]]:
        """(wire bytes, send time) of frames written and not answered: the monitor's evidence of a slow link."""
        sent = (self._inflight.get(i) for i in self._outstanding)
        return [(self._wire_bytes(e.frame), e.sent_at) for e in sent if e is not None and e.sent_at]

    async def _probe(self, image: np.ndarray | torch.Tensor, width: int) -> None:
        """Send a frame only to measure the link: no deadline, so a late answer still measures it."""
        enc = await self.encode(image, "entropic", width)
        frame_id = next(self._ids)
        await self._send(enc, frame_id, 0, time.monotonic(), Prediction(frame_id=frame_id, status="FAILED"))

    async def infer(
        self,
        image: np.ndarray | torch.Tensor,
        *,
        codec: str | None = None,
        width: int | None = None,
        deadline_ms: int | None = None,
    ) -> Prediction:
        """Run one frame. Never raises for a frame that fails: the Prediction's status says why."""
        t0 = time.monotonic()
        deadline = self.deadline_ms if deadline_ms is None else deadline_ms
        codec = codec or self.codec
        estimate = self.monitor.estimate(self._pending())
        if width is None and codec_kind(codec).has_widths and self.planner is not None:
            decision, estimate = self.planner.plan(deadline, self.connected, self._pending())
            if decision.local:
                p = await self.infer_local(image)
                if decision.probe:  # the local result is the answer; the probe only measures the link
                    task = asyncio.create_task(self._probe(image, decision.width))
                    self._probes.add(task)
                    task.add_done_callback(self._probes.discard)
                p.latency_ms = (time.monotonic() - t0) * 1e3
                p.bandwidth_bps, p.rtt_ms = estimate.bandwidth_bps, estimate.rtt_ms
                return p
            width = decision.width
        enc = await self.encode(image, codec, self.width if width is None else width)
        if self.planner is not None and codec_kind(enc.codec).has_widths:
            self.planner.encoded(enc.width, len(enc.payload) + frame_overhead(self.bundle, enc.codec, enc.width),
                                 enc.head_ms)  # fmt: skip
        frame_id = next(self._ids)
        prediction = Prediction(
            frame_id=frame_id, status="FAILED", codec=enc.codec, width=enc.width, payload_bytes=len(enc.payload),
            device_ms=enc.head_ms, bandwidth_bps=estimate.bandwidth_bps, rtt_ms=estimate.rtt_ms,
        )  # fmt: skip
        elapsed_ms = (time.monotonic() - t0) * 1e3
        if deadline and elapsed_ms >= deadline:
            prediction.status, prediction.error = "DEADLINE_EXCEEDED", "the deadline passed on the device"
            prediction.latency_ms = elapsed_ms
            return prediction
        result = await self._send(enc, frame_id, deadline, t0, prediction)
        if result is not None:
            prediction.status = status_name(result.status)
            prediction.error = result.error
            prediction.top_k = [ClassScore(c.index, c.label, c.score) for c in result.top_k]
            prediction.server = _timings(result.timings)
        return prediction

    async def _send(
        self, enc: EncodedFrame, frame_id: int, deadline: float, t0: float, prediction: Prediction
    ) -> pb.Result | None:
        """Queue the frame for the stream and wait for its outcome, at most until its deadline."""
        assert self.bundle is not None
        frame = pb.Frame(
            frame_id=frame_id, model=self.bundle.name, version=self.bundle.version,
            bundle_sha256=self.bundle.sha256, codec=enc.codec, width=enc.width, payload=enc.payload,
            shape=list(enc.shape), capture_time_us=time.time_ns() // 1000, top_k=self.top_k,
        )  # fmt: skip
        expires = t0 + (deadline / 1e3 if deadline else self.give_up_s)
        entry = _InFlight(frame, asyncio.get_running_loop().create_future(), expires, bool(deadline))
        self._inflight[frame_id] = entry
        self._unsent.append(entry)
        self._wake.set()
        try:
            result: pb.Result = await asyncio.wait_for(
                asyncio.shield(entry.future), max(0.0, expires - time.monotonic())
            )
        except ClientError as exc:
            prediction.error = str(exc)
            return None
        except TimeoutError:
            entry.answered_at = time.monotonic()
            # Decided: a result that still comes is dropped. A frame the server holds stays in
            # _inflight until it answers, so the window keeps counting it.
            entry.future.cancel()
            if self._conn is not None and self._conn.lossy and frame_id in self._outstanding:
                self._outstanding.discard(frame_id)  # it may never be answered: free its place in the window
                self._wake.set()
            if frame_id not in self._outstanding:
                self._inflight.pop(frame_id, None)
            if entry.attempts == 0 and self.connected:  # the window was full, or the pacer held it
                why = "never sent: no room on the link for it in time"
            elif entry.attempts == 0:
                why = f"never sent: {self._link_note}"
            elif self.connected:
                why = "the server did not answer in time"
            else:
                why = self._link_note
            if deadline:
                prediction.status = "DEADLINE_EXCEEDED"
                prediction.error = f"no result within the {deadline:.0f} ms deadline ({why})"
            else:
                prediction.error = f"no result within {self.give_up_s:.1f} s ({why})"
            return None
        finally:
            prediction.attempts = entry.attempts
            prediction.latency_ms = ((entry.answered_at or time.monotonic()) - t0) * 1e3
        return result

    async def infer_local(self, image: np.ndarray | torch.Tensor) -> Prediction:
        """Local-only inference: the whole model on this device, for comparison or fallback."""
        assert self.head is not None and self.bundle is not None
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        scores, ms = await loop.run_in_executor(self._head_pool, self.head.infer_whole, image)
        if self.slowdown > 1:
            await asyncio.sleep(ms * (self.slowdown - 1) / 1e3)
            ms *= self.slowdown
        idx = np.argsort(-scores, kind="stable")[: min(self.top_k, len(scores))]
        vals = scores[idx]
        labels = self.bundle.labels
        return Prediction(
            frame_id=next(self._ids), status="OK", codec="local", device_ms=ms, local=True,
            top_k=[ClassScore(int(i), labels[int(i)], float(v)) for v, i in zip(vals, idx, strict=True)],
            latency_ms=(time.perf_counter() - t0) * 1e3,
        )  # fmt: skip

    async def close(self) -> None:
        """End the stream (the server answers what it holds first, for a few seconds at most)."""
        self._closing = True
        if self._conn is not None:  # without a server to say goodbye to, at once
            await self._conn.close(graceful=self.connected)
        if self._supervisor is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._supervisor), 5.0)
            except TimeoutError:
                self._supervisor.cancel()
        self._fail_all("the client closed")
        if self.transport is not None:
            await self.transport.close()
        if self._channel is not None:
            await self._channel.close()
        self._head_pool.shutdown(wait=False)


class SplitClient:
    """The synchronous face of AsyncSplitClient (its event loop runs on a private thread)."""

    def __init__(self, server: str, model: str = DEFAULT_MODEL, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="splitclient", daemon=True)
        self._thread.start()
        self._client = self._run(self._create(server, model, kwargs))
        try:
            self._run(self._client.connect())
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _create(server: str, model: str, kwargs: dict) -> AsyncSplitClient:
        return AsyncSplitClient(server, model, **kwargs)  # built on the loop it will run on

    def _run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def bundle(self) -> CodingBundle:
        assert self._client.bundle is not None
        return self._client.bundle

    @property
    def client(self) -> AsyncSplitClient:
        return self._client

    def infer(self, image: np.ndarray | torch.Tensor, **kwargs: Any) -> Prediction:
        return self._run(self._client.infer(image, **kwargs))

    def submit(self, image: np.ndarray | torch.Tensor, **kwargs: Any) -> concurrent.futures.Future:
        """Start one frame without waiting; the future resolves to its Prediction."""
        return asyncio.run_coroutine_threadsafe(self._client.infer(image, **kwargs), self._loop)

    def infer_local(self, image: np.ndarray | torch.Tensor) -> Prediction:
        return self._run(self._client.infer_local(image))

    def close(self) -> None:
        try:
            self._run(self._client.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> SplitClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["AsyncSplitClient", "ClientError", "Prediction", "SplitClient"]
