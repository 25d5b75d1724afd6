"""Frames on a WebRTC datachannel (aiortc): unordered and partially reliable, so a loss costs one frame.

TCP (the gRPC transport) delivers in order: one lost segment holds back every
frame behind it, and a frame already late is still retransmitted. Here the
device opens two datachannels on one peer connection, signalled through the
server's ``Signal`` RPC (so the token and TLS of the gRPC channel apply):

- "frames": unordered; by default SCTP retransmits a frame only while it can
  still make its deadline (``maxPacketLifeTime`` = the client's deadline), then
  abandons it;
- "results": unordered and reliable by default (results are small; a lost one
  would turn a computed frame into a miss), configurable.

A frame with a deadline that fits in one packet is sent twice (``copies``): redundancy
rather than a retransmission that would come too late (see ``splitserve.datachannel``);
the server drops the second copy, and sends small results twice the same way. A larger
frame goes as k one-packet pieces and their XOR (``parity``, see ``splitserve.parity``):
the server rebuilds it from the first k to arrive.

A datachannel has no flow control the sender can feel, and aiortc drops what
overflows, so the sender paces itself: frames leave no faster than the
bandwidth estimate (times a headroom factor), and never while the channel
still buffers more than ``max_buffered`` bytes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator

import grpc
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from google.protobuf.message import DecodeError

from splitserve import parity as fec
from splitserve.datachannel import (
    DATACHANNEL_FRAMING,
    FRAMES_CHANNEL,
    REDUNDANT_MAX_BYTES,
    RESULTS_CHANNEL,
    Duplicates,
    tune_sctp,
)
from splitserve.device_client.channel import ChannelSettings
from splitserve.device_client.transports.base import (
    DEFAULT_WINDOW,
    Connection,
    RateSource,
    Transport,
    TransportError,
)
from splitserve.proto import edge_inference_pb2 as pb
from splitserve.proto import edge_inference_pb2_grpc as pb_grpc

log = logging.getLogger("splitserve.device")
tune_sctp()
_CLOSED = object()


class WebRTCConnection(Connection):
    """One peer connection with its two datachannels."""

    lossy = True

    def __init__(
        self,
        pc: RTCPeerConnection,
        frames: RTCDataChannel,
        results: RTCDataChannel,
        window: int,
        rate: RateSource,
        headroom: float,
        max_buffered: int,
        copies: int,
        parity: bool = True,
    ) -> None:
        self.pc = pc
        self.frames = frames
        self.window = window
        self.rate = rate
        self.headroom = headroom
        self.max_buffered = max_buffered
        self.copies = copies
        self.parity = parity
        self._group = secrets.randbits(32)  # pieces of one frame share a group number
        self._duplicates = Duplicates()
        self._results: asyncio.Queue = asyncio.Queue()
        self._next_send = 0.0  # monotonic: when the pacer lets the next frame go
        self.dropped_results = 0  # messages on the results channel that were not a Result
        for channel in (frames, results):  # the server answers a malformed frame on either
            channel.on("message", self._on_message)
        results.on("close", lambda: self._end("the server closed the results channel"))
        frames.on("close", lambda: self._end("the server closed the frames channel"))

        @pc.on("connectionstatechange")
        def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self._end(f"the peer connection {pc.connectionState}")

    def _on_message(self, message: bytes | str) -> None:
        result = pb.Result()
        try:
            if isinstance(message, str):
                raise DecodeError("a text message")
            if self._duplicates.seen(message):
                return  # the redundant copy of a result already taken
            result.ParseFromString(message)
        except DecodeError as exc:
            self.dropped_results += 1
            log.warning("dropped a datachannel message that is not a Result (%s)", exc)
            return
        self._results.put_nowait(result)

    def _end(self, reason: str) -> None:
        self._results.put_nowait((_CLOSED, reason))

    async def pace(self, nbytes: int) -> None:
        # the channel's own buffer first: what waits there waits behind the link anyway
        while self.frames.readyState == "open" and self.frames.bufferedAmount > self.max_buffered:
            await asyncio.sleep(0.002)
        rate = self.rate()
        now = time.monotonic()
        if rate:
            wait = self._next_send - now
            if wait > 0:
                await asyncio.sleep(wait)
                now = time.monotonic()
            copies = self.copies if nbytes <= REDUNDANT_MAX_BYTES else 1
            self._next_send = max(now, self._next_send) + copies * nbytes * 8 / (rate * self.headroom)

    async def send(self, frame: pb.Frame) -> None:
        if self.frames.readyState != "open":
            raise TransportError(f"the frames channel is {self.frames.readyState}")
        data = frame.SerializeToString()
        # a copy only of frames with a deadline: their bytes differ on every send (the budget left is
        # stamped in), so the server's duplicate check never mistakes a resend for a copy
        copies = self.copies if frame.deadline_ms and len(data) <= REDUNDANT_MAX_BYTES else 1
        messages = [data] * copies
        if self.parity and frame.deadline_ms and copies == 1:
            self._group += 1
            messages = fec.split(data, self._group) or messages
        try:
            for message in messages:
                self.frames.send(message)
        except ValueError as exc:  # over the peer's message size: this frame cannot go; the others can
            log.warning("frame %d not sent: %s", frame.frame_id, exc)
        except ConnectionError as exc:
            raise TransportError(f"the datachannel broke ({exc})") from None

    async def results(self) -> AsyncIterator[pb.Result]:
        while True:
            item = await self._results.get()
            if isinstance(item, tuple) and item[0] is _CLOSED:
                if item[1].startswith("the peer connection failed"):
                    raise TransportError(item[1])
                return
            yield item

    async def close(self, graceful: bool) -> None:
        if graceful:  # let what the channel still buffers leave first, briefly
            deadline = time.monotonic() + 2.0
            while self.frames.readyState == "open" and self.frames.bufferedAmount and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        await self.pc.close()
        self._end("the client closed")


class WebRTCTransport(Transport):
    """Peer connections to the edge server, signalled over the client's gRPC channel.

    ``deadline_ms`` (the client's frame deadline) is the default lifetime of a frame on the
    link; ``frame_lifetime_ms`` / ``frame_retransmits`` override it (0 retransmits: fire and
    forget), and ``results_*`` set the results channel (default: unordered, reliable); ``copies=1``
    turns off the redundant copy of small frames, ``parity=False`` the parity piece of larger ones
    (they then go whole). ``whip``: the URL of the server's WHIP endpoint
    (``edge-server --http-port``: ``http(s)://host:port/v1/whip``), to signal over HTTP as a browser
    does instead of the ``Signal`` RPC; the token goes along the same way.
    """

    name = "webrtc"
    framing = DATACHANNEL_FRAMING

    def __init__(
        self,
        stub: pb_grpc.EdgeInferenceStub,
        settings: ChannelSettings,
        rate: RateSource,
        *,
        deadline_ms: int = 0,
        frame_lifetime_ms: int | None = None,
        frame_retransmits: int | None = None,
        results_ordered: bool = False,
        results_lifetime_ms: int | None = None,
        results_retransmits: int | None = None,
        headroom: float = 1.25,
        max_buffered: int = 64 * 1024,
        copies: int = 2,
        parity: bool = True,
        open_timeout: float = 15.0,
        whip: str | None = None,
    ) -> None:
        if frame_lifetime_ms is not None and frame_retransmits is not None:
            raise ValueError("set frame_lifetime_ms or frame_retransmits, not both (a datachannel takes one)")
        if results_lifetime_ms is not None and results_retransmits is not None:
            raise ValueError("set results_lifetime_ms or results_retransmits, not both (a datachannel takes one)")
        if copies not in (1, 2):
            raise ValueError(f"copies must be 1 or 2, got {copies}")
        if not headroom > 0:
            raise ValueError(f"headroom must be > 0, got {headroom}")
        self.stub = stub
        self.settings = settings
        self.rate = rate
        if frame_lifetime_ms is None and frame_retransmits is None and deadline_ms:
            frame_lifetime_ms = deadline_ms
        self.frame_reliability = {"maxPacketLifeTime": frame_lifetime_ms, "maxRetransmits": frame_retransmits}
        self.results_ordered = results_ordered
        self.results_reliability = {"maxPacketLifeTime": results_lifetime_ms, "maxRetransmits": results_retransmits}
        self.headroom = headroom
        self.max_buffered = max_buffered
        self.copies = copies
        self.parity = parity
        self.open_timeout = open_timeout
        if whip is not None and not whip.startswith(("http://", "https://")):
            raise ValueError(f"whip must be an http(s):// URL of the server's WHIP endpoint, got {whip!r}")
        self.whip = whip

    async def open(self) -> WebRTCConnection:
        # no STUN or TURN servers: the device reaches the server directly (aiortc would ask Google's STUN)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            return await asyncio.wait_for(self._open(pc), self.open_timeout)
        except TimeoutError:
            await pc.close()
            raise TransportError(
                f"no WebRTC connection to {self.settings.target} within {self.open_timeout:.0f} s "
                "(is UDP between device and server blocked?)"
            ) from None
        except BaseException:
            await pc.close()
            raise

    async def _open(self, pc: RTCPeerConnection) -> WebRTCConnection:
        frames = pc.createDataChannel(FRAMES_CHANNEL, ordered=False, **self.frame_reliability)
        results = pc.createDataChannel(RESULTS_CHANNEL, ordered=self.results_ordered, **self.results_reliability)
        opened = asyncio.Event()
        failed = asyncio.Event()
        frames.on("open", lambda: results.readyState == "open" and opened.set())
        results.on("open", lambda: frames.readyState == "open" and opened.set())
        pc.on("connectionstatechange", lambda: pc.connectionState == "failed" and failed.set())
        await pc.setLocalDescription(await pc.createOffer())  # gathers every ICE candidate first
        offer = pb.PeerOffer(sdp=pc.localDescription.sdp, type=pc.localDescription.type)
        if self.whip is not None:
            answer = await self._signal_whip(offer)
        else:
            try:
                answer = await self.stub.Signal(offer, metadata=self.settings.metadata(), wait_for_ready=True)
            except grpc.aio.AioRpcError as exc:
                raise TransportError(f"{exc.code().name}: {exc.details()}") from None
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type=answer.type))
        waits = [asyncio.ensure_future(opened.wait()), asyncio.ensure_future(failed.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        if failed.is_set():
            raise TransportError(f"the WebRTC connection to {self.settings.target} failed (ICE found no path)")
        window = answer.max_inflight or DEFAULT_WINDOW
        return WebRTCConnection(pc, frames, results, window, self.rate, self.headroom, self.max_buffered, self.copies,
                                self.parity)  # fmt: skip

    def wire_bytes(self, frame: pb.Frame) -> int:
        """A frame cut into pieces puts them all on the link, each with its own framing."""
        if not self.parity:
            return super().wire_bytes(frame)
        return fec.wire_bytes(frame.ByteSize(), self.framing)

    async def _signal_whip(self, offer: pb.PeerOffer) -> pb.PeerAnswer:
        """The offer to the WHIP endpoint (RFC 9725: POST application/sdp, 201 with the answer)."""
        import aiohttp

        headers = {"Content-Type": "application/sdp", **dict(self.settings.metadata())}
        headers = {("Authorization" if k == "authorization" else k): v for k, v in headers.items()}
        try:
            async with aiohttp.ClientSession() as http, http.post(self.whip, data=offer.sdp, headers=headers,
                                                                  ssl=self._whip_ssl()) as response:  # fmt: skip
                text = await response.text()
                if response.status != 201:
                    raise TransportError(f"WHIP {self.whip}: HTTP {response.status}: {text.strip()}")
                window = int(response.headers.get("X-Splitserve-Window", "0") or 0)
        except aiohttp.ClientError as exc:
            raise TransportError(f"WHIP {self.whip}: {exc}") from None
        return pb.PeerAnswer(sdp=text, type="answer", max_inflight=window)

    def _whip_ssl(self):  # type: ignore[no-untyped-def]
        """The CA the client trusts for gRPC trusts the WHIP endpoint too (None: the system's)."""
        if not self.whip or not self.whip.startswith("https://") or not self.settings.ca_cert:
            return None
        import ssl

        return ssl.create_default_context(cafile=self.settings.ca_cert)
