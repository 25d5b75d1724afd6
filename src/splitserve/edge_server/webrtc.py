"""WebRTC peers: the datachannel transport beside the gRPC stream.

A device signals through ``EdgeInference.Signal`` (a unary gRPC call, so the
bearer token and TLS apply to it as to ``Stream``): its SDP offer in, the
server's answer out. The device opens two datachannels on the peer connection,
"frames" (its Frames) and "results" (our Results), and chooses their
reliability itself: frames unordered and abandoned once they cannot make their
deadline, so a lost packet costs one frame, not the frames behind it.

Each peer's frames feed a ``StreamSession``, exactly as a gRPC stream's do: the
same pipeline and batcher, the same in-flight window, the same drain. A
message that is not a Frame gets an INVALID_FRAME Result on the results
channel; the peer and every other peer go on. The device sends small frames
twice (redundancy instead of a retransmission that would come too late): the
second copy is dropped here, and small final results are sent twice the same
way. Larger frames come as one-packet pieces and their XOR (``splitserve.parity``);
the frame is rebuilt from the first k pieces to arrive. A peer that closes, fails
(ICE consent lost: the device vanished) or never opens its channels is
closed and forgotten.

A peer may add one **lane**: a second peer connection whose only channel,
"frames", feeds the same reassembler. A browser cannot tune its SCTP stack,
and Chrome's keeps a congestion window of at least four packets that it fills
exactly, fragmenting a piece across packets to do so: a frame of five pieces
then has its last piece wait a round trip, which a frame with a lost piece
cannot afford. Over two associations each carries half a frame's pieces, with
a window of its own. A lane has no session, no results channel and no place
under --max-streams; it ends with its peer.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable

from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from google.protobuf.message import DecodeError

from splitserve import parity
from splitserve.datachannel import FRAMES_CHANNEL, REDUNDANT_MAX_BYTES, RESULTS_CHANNEL, Duplicates, tune_sctp
from splitserve.edge_server.session import StreamSession
from splitserve.proto import edge_inference_pb2 as pb

log = logging.getLogger("splitserve.server")
Status = pb.Result.Status
TRANSPORT = "webrtc"
tune_sctp()
OPEN_TIMEOUT_S = 15.0  # a peer that has not opened its frames channel by then is closed
MAX_LANES = 1  # second associations per peer: two halve each one's share of a frame
_END = None


def _nothing() -> None:
    pass


class SignalError(ValueError):
    """The offer cannot be answered; the message says why (it goes back as INVALID_ARGUMENT)."""


class NoSuchPeer(LookupError):
    """A lane for a peer this server does not have (HTTP 404)."""


class LaneRefused(RuntimeError):
    """The peer already has its lane (HTTP 409)."""


class StreamsExhausted(RuntimeError):
    """Not now: the server is draining, or has --max-streams sessions open (RESOURCE_EXHAUSTED, HTTP 503)."""


class Peer:
    """One device's peer connection: datachannel messages in, a StreamSession, Results out."""

    def __init__(
        self, pc: RTCPeerConnection, session: StreamSession, max_message_bytes: int, on_frame: Callable[[], None]
    ) -> None:
        self.pc = pc
        self.on_frame = on_frame
        self.session = session
        self.max_message_bytes = max_message_bytes
        # frames parsed and not yet taken by the session; bounded: the session reads at once unless
        # the device leaves results unread, and then it should not send more anyway
        self._frames: asyncio.Queue = asyncio.Queue(maxsize=max(16, 2 * session.max_inflight))
        self.frames_channel: RTCDataChannel | None = None
        self.results_channel: RTCDataChannel | None = None
        self.opened = asyncio.Event()
        self.frames_read = 0
        self._duplicates = Duplicates()
        self._pieces = parity.Reassembler(max(64, 2 * session.max_inflight), max_message_bytes)
        self._ended = False
        self.task: asyncio.Task | None = None
        self.lanes: list[RTCPeerConnection] = []

    def attach(self, channel: RTCDataChannel) -> None:
        if channel.label == RESULTS_CHANNEL:
            self.results_channel = channel
            return
        if channel.label != FRAMES_CHANNEL or self.frames_channel is not None:
            log.warning("peer opened an unexpected datachannel %r; closing it", channel.label)
            channel.close()
            return
        self.frames_channel = channel
        channel.on("message", self._on_message)
        channel.on("close", self.end)
        self.opened.set()

    def attach_lane(self, channel: RTCDataChannel) -> None:
        """A lane's channel: its messages are this peer's, as if they came on the frames channel."""
        if channel.label != FRAMES_CHANNEL:
            log.warning("a lane opened a %r datachannel; a lane carries frames only: closing it", channel.label)
            channel.close()
            return
        channel.on("message", self._on_message)

    def _on_message(self, message: bytes | str) -> None:
        if isinstance(message, str):
            self.send(self._refusal(0, "a text message on the frames channel: send a serialized splitserve.v1.Frame"))
            return
        if len(message) > self.max_message_bytes:
            self.send(self._refusal(0, f"a {len(message)}-byte message is over the {self.max_message_bytes}-byte cap"))
            return
        if parity.is_piece(message):
            try:
                message = self._pieces.add(message)
            except parity.PieceError as exc:
                self.send(self._refusal(0, f"a malformed frame piece: {exc}"))
                return
            if message is None:
                return  # more pieces to come, or a spare one of a frame already rebuilt
        if self._duplicates.seen(message):
            return  # the redundant copy of a frame already taken
        frame = pb.Frame()
        try:
            frame.ParseFromString(message)
        except DecodeError as exc:
            self.send(self._refusal(0, f"the message is not a splitserve.v1.Frame ({exc})"))
            return
        try:
            self._frames.put_nowait(frame)
        except asyncio.QueueFull:
            self.send(pb.Result(frame_id=frame.frame_id, status=Status.OVERLOADED, model=frame.model[:256],
                                error="too many frames queued on this peer; wait for results"))  # fmt: skip
            return
        self.frames_read += 1
        self.on_frame()

    @staticmethod
    def _refusal(frame_id: int, error: str) -> pb.Result:
        return pb.Result(frame_id=frame_id, status=Status.INVALID_FRAME, error=error)

    def send(self, result: pb.Result) -> bool:
        """Put one Result on the results channel (the frames channel when the device opened none)."""
        channel = self.results_channel or self.frames_channel
        if channel is None or channel.readyState != "open":
            return False
        data = result.SerializeToString()
        # OVERLOADED / UNAVAILABLE make the device send the frame again: one copy, or it would twice
        final = result.status not in (Status.OVERLOADED, Status.UNAVAILABLE)
        try:
            for _ in range(2 if final and len(data) <= REDUNDANT_MAX_BYTES else 1):
                channel.send(data)
        except (ValueError, ConnectionError) as exc:  # the association closed under us
            log.info("cannot send result %d to a peer: %s", result.frame_id, exc)
            return False
        return True

    async def frames(self) -> AsyncIterator[pb.Frame]:
        while True:
            frame = await self._frames.get()
            if frame is _END:
                return
            yield frame

    @property
    def ended(self) -> bool:
        return self._ended

    def end(self) -> None:
        """No more frames will come (the channel or the connection closed): answer what is held, then stop."""
        if not self._ended:
            self._ended = True
            self.opened.set()  # a peer ended before it opened its channels stops waiting for them
            try:
                self._frames.put_nowait(_END)
            except asyncio.QueueFull:  # the session is not reading: nothing queued can be answered in time
                while not self._frames.empty():
                    self._frames.get_nowait()
                self._frames.put_nowait(_END)

    async def close(self) -> None:
        """Close the peer connection and its lanes."""
        for lane in list(self.lanes):
            await lane.close()
        self.lanes.clear()
        await self.pc.close()

    async def serve(self) -> None:
        async for result in self.session.results(self.frames()):
            self.send(result)


class WebRTCPeers:
    """Every WebRTC peer of this server; ``answer`` creates one per offer."""

    def __init__(self, service) -> None:  # type: ignore[no-untyped-def]  # EdgeInferenceService
        self.service = service
        self.peers: dict[str, Peer] = {}
        self.max_message_bytes = 4 * 1024 * 1024
        self._tasks: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self.peers)

    async def answer(self, offer: pb.PeerOffer) -> pb.PeerAnswer:
        return (await self.offer(offer))[0]

    async def offer(self, offer: pb.PeerOffer) -> tuple[pb.PeerAnswer, str]:
        """Answer an SDP offer with a new peer: (the answer, the peer's id for ``end``)."""
        service = self.service
        if service.draining.is_set():
            raise StreamsExhausted("the server is shutting down")
        if service.max_streams is not None and len(service.sessions) >= service.max_streams:
            raise StreamsExhausted(f"this server already has {len(service.sessions)} streams open")
        _check_offer(offer)
        session = StreamSession(service.pipeline, service.max_inflight, service.draining)
        # counted from here, before the first await: a burst of offers cannot overshoot --max-streams
        service.sessions.add(session)
        # no STUN or TURN servers: the device reaches the server directly (aiortc would ask Google's STUN)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        metrics = service.metrics
        count = metrics.transport_frames.labels(TRANSPORT).inc if metrics is not None else _nothing
        peer = Peer(pc, session, self.max_message_bytes, count)
        pc.on("datachannel", peer.attach)

        @pc.on("connectionstatechange")
        def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                peer.end()

        try:
            await _answer(pc, offer)
        except BaseException:  # no peer: its place under --max-streams is free again
            service.sessions.discard(session)
            raise
        peer_id = secrets.token_urlsafe(12)
        self.peers[peer_id] = peer
        if metrics is not None:
            metrics.streams.labels(TRANSPORT).inc()
        peer.task = asyncio.create_task(self._run(peer_id, peer), name="webrtc-peer")  # held: the loop keeps weak refs
        local = pc.localDescription
        return pb.PeerAnswer(sdp=local.sdp, type=local.type, max_inflight=service.max_inflight), peer_id

    async def add_lane(self, peer_id: str, offer: pb.PeerOffer) -> pb.PeerAnswer:
        """Answer an offer for a second association of peer ``peer_id`` (see the module's docstring)."""
        if self.service.draining.is_set():
            raise StreamsExhausted("the server is shutting down")
        peer = self.peers.get(peer_id)
        if peer is None or peer.ended:
            raise NoSuchPeer("no such peer")
        if len(peer.lanes) >= MAX_LANES:
            raise LaneRefused(f"this peer already has {len(peer.lanes)} lane(s), the most it may have")
        _check_offer(offer)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        peer.lanes.append(pc)  # before the first await: two offers at once cannot both pass the check
        opened = asyncio.Event()

        @pc.on("datachannel")
        def _channel(channel: RTCDataChannel) -> None:
            peer.attach_lane(channel)
            opened.set()

        async def drop() -> None:
            if pc in peer.lanes:
                peer.lanes.remove(pc)
            await pc.close()

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await drop()

        async def expire() -> None:  # a lane that never opens frees its place for another try
            try:
                await asyncio.wait_for(opened.wait(), OPEN_TIMEOUT_S)
            except TimeoutError:
                log.info("a lane did not open its channel within %.0f s; closed", OPEN_TIMEOUT_S)
                await drop()

        try:
            await _answer(pc, offer)
        except BaseException:
            if pc in peer.lanes:
                peer.lanes.remove(pc)
            raise
        task = asyncio.create_task(expire(), name="webrtc-lane-open")
        self._tasks.add(task)  # held: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)
        local = pc.localDescription
        return pb.PeerAnswer(sdp=local.sdp, type=local.type, max_inflight=self.service.max_inflight)

    async def end(self, peer_id: str) -> bool:
        """End one peer (WHIP's DELETE): what it sent is answered first; False if there is no such peer."""
        peer = self.peers.get(peer_id)
        if peer is None:
            return False
        peer.end()
        return True

    async def _run(self, peer_id: str, peer: Peer) -> None:
        service = self.service
        metrics = service.metrics
        started = time.monotonic()
        try:
            try:
                await asyncio.wait_for(peer.opened.wait(), OPEN_TIMEOUT_S)
            except TimeoutError:
                log.info("a WebRTC peer did not open its frames channel within %.0f s; closed", OPEN_TIMEOUT_S)
                return
            await peer.serve()
        except Exception:  # a bug must cost this peer, not the server
            log.exception("WebRTC peer failed")
        finally:
            service.sessions.discard(peer.session)
            self.peers.pop(peer_id, None)
            if metrics is not None:
                metrics.streams.labels(TRANSPORT).dec()
            await peer.close()
            log.debug("WebRTC peer closed after %.1f s, %d frames", time.monotonic() - started, peer.frames_read)

    async def close(self) -> None:
        for peer in list(self.peers.values()):
            peer.end()
            await peer.close()


def _check_offer(offer: pb.PeerOffer) -> None:
    """What an offer must be before anything is built for it: an SDP offer with a datachannel section."""
    if offer.type != "offer":
        raise SignalError(f"expected an SDP offer, got type {offer.type!r}")
    if "m=application" not in offer.sdp:
        raise SignalError("the offer has no datachannel (m=application) section")


async def _answer(pc: RTCPeerConnection, offer: pb.PeerOffer) -> None:
    """Set the offer, make the answer; a bad offer closes ``pc`` and is a SignalError."""
    try:
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except (ValueError, AssertionError, KeyError, IndexError, TypeError) as exc:  # aiortc's SDP parser's
            raise SignalError(f"cannot use the SDP offer: {exc or type(exc).__name__}") from None
    except BaseException:
        await pc.close()
        raise
