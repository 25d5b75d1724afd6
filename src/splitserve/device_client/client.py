"""SplitClient: run the head here, the tail on an edge server, over one gRPC stream or a WebRTC datachannel.

    options = ClientOptions(policy="adaptive", deadline_ms=150)
    with SplitClient("edge.local:50051", "fmnist-split", options) as client:
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

The client composes small parts, each with one job: ``DeviceCompute`` (the head on its
thread), ``FramePlanner`` (the bandwidth monitor and the width policy), ``FrameLedger``
(every frame's one outcome, the window) and ``ConnectionSupervisor`` (the connection, its
writer, reconnects). A frame's path reads top to bottom in ``infer``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
import time
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from splitserve.codecs import codec_kind
from splitserve.device_client.bandwidth import BandwidthMonitor
from splitserve.device_client.bundles import device_bundle
from splitserve.device_client.channel import ChannelSettings, aio_channel, reach
from splitserve.device_client.head import DeviceCompute, EncodedFrame, HeadRunner
from splitserve.device_client.ledger import FrameLedger
from splitserve.device_client.options import ClientOptions, options_from
from splitserve.device_client.policy import Decision, FramePlanner, Policy, policy_for_bundle
from splitserve.device_client.prediction import (
    ClientError,
    Prediction,
    frame_overhead,
    make_frame,
    status_name,
    wire_bytes,
)
from splitserve.device_client.runtimes import RuntimeUnavailable
from splitserve.device_client.supervisor import ConnectionSupervisor
from splitserve.device_client.transports import make_transport
from splitserve.device_client.transports.grpc import GRPC_FRAMING
from splitserve.models.manifest import BundleError
from splitserve.models.zoo import DEFAULT_MODEL
from splitserve.proto import edge_inference_pb2 as pb
from splitserve.proto import edge_inference_pb2_grpc as pb_grpc

if TYPE_CHECKING:  # the SDK imports torch only when the torch runtime is chosen
    import torch


class AsyncSplitClient:
    def __init__(self, server: str, model: str = DEFAULT_MODEL, options: ClientOptions | None = None,
                 **deprecated: Any) -> None:  # fmt: skip
        """``options``: every setting (see ``ClientOptions``); keyword settings are the older API, deprecated."""
        self.options = o = options_from(options, deprecated, "AsyncSplitClient")
        self.settings = o.channel or ChannelSettings(target=server)
        self.settings.target = server
        self.model = model
        self.monitor = BandwidthMonitor()
        self.ledger = FrameLedger()
        self.bundle: Any = None  # a CodingBundle; the full torch Bundle with the torch runtime
        self.head: HeadRunner | None = None
        self.compute: DeviceCompute | None = None
        self.policy: Policy | None = None
        self.planner: FramePlanner | None = None  # the policy and the monitor, fed back per frame
        self.supervisor: ConnectionSupervisor | None = None
        self._ids = itertools.count(1)
        self._probes: set[asyncio.Task] = set()
        self._channel: grpc.aio.Channel | None = None
        self.warmup_ms = 0.0  # connect() ran the head once per width it may use

    async def __aenter__(self) -> AsyncSplitClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def connect(self) -> None:
        """Reach the server, get the bundle (local, or GetHead), open the connection."""
        o = self.options
        self._channel = aio_channel(self.settings)
        stub = pb_grpc.EdgeInferenceStub(self._channel)
        try:
            await reach(self._channel, self.settings, o.connect_timeout)
            bundle = await device_bundle(stub, self.model, o.version, o.fetch, self.settings.metadata())
        except ClientError:
            await self._channel.close()
            raise
        try:
            self.head = HeadRunner(bundle, o.head_threads, o.runtime)
        except (RuntimeUnavailable, BundleError, ValueError) as exc:
            await self._channel.close()
            raise ClientError(f"cannot run the head of {bundle.name}:{bundle.version}: {exc}") from None
        problem = self.head.runtime.cannot(o.codec, local=o.policy == "local")
        if problem:
            await self._channel.close()
            raise ClientError(f"{bundle.name}:{bundle.version}: {problem}")
        self.bundle = self.head.bundle
        self.compute = DeviceCompute(self.head, o.slowdown, o.image_quality)
        local_ms = self.compute.local_ms() if isinstance(o.policy, str) and self.head.runtime.runs_locally() else None
        overheads = [frame_overhead(self.bundle, "entropic", w) for w in range(len(self.bundle.widths))]
        self.policy = policy_for_bundle(o.policy, self.bundle.widths, overheads, o.slowdown, local_ms)
        self.planner = FramePlanner(self.policy, self.monitor) if self.policy is not None else None
        try:
            transport = make_transport(o.transport, stub, self.settings, self._link_rate, **self._transport_options())
        except (ValueError, TypeError) as exc:
            await self._channel.close()
            raise ClientError(str(exc)) from None
        self.supervisor = ConnectionSupervisor(transport, self.ledger, self.settings.target, o.max_backoff_s,
                                               self._on_result)  # fmt: skip
        self.supervisor.start()
        if o.policy != "local":  # while the connection opens
            has_widths = codec_kind(o.codec).has_widths
            n = len(self.bundle.widths)
            widths = list(range(n)) if self.planner is not None and has_widths else [o.width]
            # a width the bundle lacks is not warmed: the first frame says what is wrong with it
            self.warmup_ms = await self.compute.warm(o.codec, [w for w in widths if -1 <= w < n or not has_widths])
        # a WebRTC connection takes a few round trips (ICE, DTLS, SCTP): let the first frame find it open
        try:
            await asyncio.wait_for(asyncio.shield(self.supervisor.tried.wait()), o.connect_timeout)
        except TimeoutError:
            pass  # frames wait for it (or for their deadline) like after a break

    def _transport_options(self) -> dict[str, Any]:
        """The transport's options: a datachannel keeps frames for their deadline unless told otherwise."""
        options = dict(self.options.transport_options)
        if self.options.transport == "webrtc" and self.options.deadline_ms:
            options.setdefault("deadline_ms", self.options.deadline_ms)
        return options

    def _link_rate(self) -> float | None:
        """The bandwidth estimate (bit/s), for a transport that paces its sends."""
        return self.monitor.estimate(self._pending()).bandwidth_bps

    @property
    def connected(self) -> bool:
        return self.supervisor is not None and self.supervisor.connected.is_set()

    @property
    def reconnects(self) -> int:
        return self.supervisor.reconnects if self.supervisor is not None else 0

    @property
    def transport(self):  # type: ignore[no-untyped-def]
        return self.supervisor.transport if self.supervisor is not None else None

    def measure_local_ms(self, repeat: int = 5) -> float:
        assert self.compute is not None, "call connect() first"
        return self.compute.local_ms(repeat)

    def plan(self, deadline_ms: float) -> Decision:
        """What the policy would do with the next frame, given what the link looks like now."""
        if self.planner is None:
            return Decision(local=False, width=self.options.width)
        return self.planner.plan(deadline_ms, self.connected, self._pending())[0]

    async def encode(self, image: np.ndarray | torch.Tensor, codec: str, width: int) -> EncodedFrame:
        assert self.compute is not None, "call connect() first"
        return await self.compute.encode(image, codec, width)

    # -- one frame, top to bottom ---------------------------------------------------------
    async def infer(self, image: np.ndarray | torch.Tensor, *, codec: str | None = None, width: int | None = None,
                    deadline_ms: int | None = None) -> Prediction:  # fmt: skip
        """Run one frame. Never raises for a frame that fails: the Prediction's status says why."""
        t0 = time.monotonic()
        deadline = self.options.deadline_ms if deadline_ms is None else deadline_ms
        codec = codec or self.options.codec
        # 1. plan: which width (or local inference), from the link as it looks now
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
        # 2. the head and the codec, on the device
        enc = await self.encode(image, codec, self.options.width if width is None else width)
        if self.planner is not None and codec_kind(enc.codec).has_widths:
            self.planner.encoded(enc.width, len(enc.payload) + frame_overhead(self.bundle, enc.codec, enc.width),
                                 enc.head_ms)  # fmt: skip
        prediction = Prediction(
            frame_id=next(self._ids), status="FAILED", codec=enc.codec, width=enc.width,
            payload_bytes=len(enc.payload), device_ms=enc.head_ms, bandwidth_bps=estimate.bandwidth_bps,
            rtt_ms=estimate.rtt_ms,
        )  # fmt: skip
        elapsed_ms = (time.monotonic() - t0) * 1e3
        if deadline and elapsed_ms >= deadline:
            prediction.status, prediction.error = "DEADLINE_EXCEEDED", "the deadline passed on the device"
            prediction.latency_ms = elapsed_ms
            return prediction
        # 3. the link and the server: its one outcome, by its deadline
        result = await self._send(enc, deadline, t0, prediction)
        return prediction.take(result) if result is not None else prediction

    async def _send(self, enc: EncodedFrame, deadline: float, t0: float, prediction: Prediction) -> pb.Result | None:
        """Queue the frame for the connection and wait for its outcome, at most until its deadline."""
        assert self.bundle is not None and self.supervisor is not None
        frame = make_frame(self.bundle, enc, prediction.frame_id, self.options.top_k)
        entry = self.ledger.add(frame, t0 + (deadline / 1e3 if deadline else self.options.give_up_s), bool(deadline))
        try:
            result = await self.ledger.outcome(entry, self.supervisor.lossy)
            if result is None:
                why = self.supervisor.why_no_result(entry.attempts)
                if deadline:
                    prediction.status = "DEADLINE_EXCEEDED"
                    prediction.error = f"no result within the {deadline:.0f} ms deadline ({why})"
                else:
                    prediction.error = f"no result within {self.options.give_up_s:.1f} s ({why})"
            return result
        except ClientError as exc:
            prediction.error = str(exc)
            return None
        finally:
            prediction.attempts = entry.attempts
            prediction.latency_ms = ((entry.answered_at or time.monotonic()) - t0) * 1e3

    def _on_result(self, result: pb.Result) -> None:
        now = time.monotonic()
        entry = self.ledger.answer(result, now)
        if entry is None:
            return
        # a late result still measures the link, and so does a frame the server found late on arrival
        if result.status in (pb.Result.Status.OK, pb.Result.Status.DEADLINE_EXCEEDED):
            elapsed_ms = (now - entry.sent_at) * 1e3
            measure = self.planner.result if self.planner is not None else self.monitor.add
            measure(self._wire_bytes(entry.frame), elapsed_ms, result.timings.total_ms)
        self.ledger.settle(entry, result, now)

    async def _probe(self, image: np.ndarray | torch.Tensor, width: int) -> None:
        """Send a frame only to measure the link: no deadline, so a late answer still measures it."""
        enc = await self.encode(image, "entropic", width)
        frame_id = next(self._ids)
        await self._send(enc, 0, time.monotonic(), Prediction(frame_id=frame_id, status="FAILED"))

    def _wire_bytes(self, frame: pb.Frame) -> int:
        return self.transport.wire_bytes(frame) if self.transport is not None else wire_bytes(frame)

    def _pending(self) -> list[tuple[int, float]]:
        return self.ledger.pending(self._wire_bytes)

    async def infer_local(self, image: np.ndarray | torch.Tensor) -> Prediction:
        """Local-only inference: the whole model on this device, for comparison or fallback."""
        assert self.compute is not None and self.bundle is not None, "call connect() first"
        t0 = time.perf_counter()
        scores, ms = await self.compute.infer_whole(image)
        p = Prediction.of_scores(next(self._ids), scores, self.bundle.labels, self.options.top_k, ms)
        p.latency_ms = (time.perf_counter() - t0) * 1e3
        return p

    async def close(self) -> None:
        """End the connection (the server answers what it holds first, for a few seconds at most)."""
        if self.supervisor is not None:
            await self.supervisor.close()
        self.ledger.fail_all("the client closed")
        if self._channel is not None:
            await self._channel.close()
        if self.compute is not None:
            self.compute.close()


class SplitClient:
    """The synchronous face of AsyncSplitClient (its event loop runs on a private thread)."""

    def __init__(self, server: str, model: str = DEFAULT_MODEL, options: ClientOptions | None = None,
                 **deprecated: Any) -> None:  # fmt: skip
        options = options_from(options, deprecated, "SplitClient")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="splitclient", daemon=True)
        self._thread.start()
        self._client = self._run(self._create(server, model, options))
        try:
            self._run(self._client.connect())
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _create(server: str, model: str, options: ClientOptions) -> AsyncSplitClient:
        return AsyncSplitClient(server, model, options)  # built on the loop it will run on

    def _run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def bundle(self) -> Any:
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


__all__ = [
    "AsyncSplitClient", "ClientError", "ClientOptions", "Prediction", "SplitClient",
    # the wire sizes, kept importable from here for the code that plans with them
    "GRPC_FRAMING", "frame_overhead", "status_name", "wire_bytes",
]  # fmt: skip
