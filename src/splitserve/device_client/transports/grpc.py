"""Frames on one bidirectional gRPC stream (``EdgeInference.Stream``) over HTTP/2 and TCP.

TCP delivers in order, so on a lossy link a lost segment holds back every frame
behind it; HTTP/2 flow control paces the writes, so no pacing is needed here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from splitserve.device_client.channel import ChannelSettings
from splitserve.device_client.transports.base import DEFAULT_WINDOW, Connection, Transport, TransportError
from splitserve.proto import edge_inference_pb2 as pb
from splitserve.proto import edge_inference_pb2_grpc as pb_grpc

# HTTP/2 DATA frame header + gRPC length prefix around each message
GRPC_FRAMING = 9 + 5
# The stream's initial metadata carries the server's in-flight window (frames per stream).
WINDOW_METADATA = "splitserve-max-inflight"


def _why(exc: grpc.aio.AioRpcError) -> str:
    return f"{exc.code().name}: {exc.details()}"


class GrpcConnection(Connection):
    """One ``Stream`` call."""

    def __init__(self, call, window: int) -> None:  # type: ignore[no-untyped-def]
        self.call = call
        self.window = window

    async def send(self, frame: pb.Frame) -> None:
        try:
            await self.call.write(frame)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError) as exc:
            raise TransportError(f"the stream broke while writing ({exc})") from None
        except asyncio.InvalidStateError:
            raise TransportError("the stream is closed") from None

    async def results(self) -> AsyncIterator[pb.Result]:
        try:
            async for result in self.call:
                yield result
        except grpc.aio.AioRpcError as exc:
            raise TransportError(_why(exc)) from None

    async def close(self, graceful: bool) -> None:
        if graceful:
            try:
                await asyncio.wait_for(self.call.done_writing(), 2.0)
                return
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError, TimeoutError):
                pass
        self.call.cancel()


class GrpcTransport(Transport):
    """Streams on the client's gRPC channel (TLS and the bearer token come with it)."""

    name = "grpc"
    framing = GRPC_FRAMING

    def __init__(self, stub: pb_grpc.EdgeInferenceStub, settings: ChannelSettings) -> None:
        self.stub = stub
        self.settings = settings

    async def open(self) -> GrpcConnection:
        call = self.stub.Stream(metadata=self.settings.metadata(), wait_for_ready=True)
        try:
            metadata = await call.initial_metadata()
        except grpc.aio.AioRpcError as exc:
            raise TransportError(_why(exc)) from None
        if call.done():  # refused before it began (draining, too many streams, bad token)
            try:
                async for _ in call:
                    pass
            except grpc.aio.AioRpcError as exc:
                raise TransportError(_why(exc)) from None
            raise TransportError("the server ended the stream")
        window = dict(metadata or ()).get(WINDOW_METADATA)
        size = int(window) if window and str(window).isdigit() and int(window) > 0 else DEFAULT_WINDOW
        return GrpcConnection(call, size)
