"""The transport interface: how frames reach the edge server and results come back.

A transport opens a ``Connection`` (one gRPC stream, one WebRTC peer connection);
the client writes frames on it within the server's window and reads results
until it ends. Everything else (deadlines, resends, the one outcome per frame,
the policy) stays in ``AsyncSplitClient``, the same for every transport.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable

from splitserve.proto import edge_inference_pb2 as pb

DEFAULT_WINDOW = 16  # a server that does not say its window gets this many frames at once
# What the client tells a transport about the link: the bandwidth estimate in bit/s (None: no estimate yet).
RateSource = Callable[[], float | None]


class TransportError(RuntimeError):
    """The connection could not open, or broke; the message says why (it becomes the frames' error)."""


class Connection(ABC):
    """One open path to the server: frames out, results in, in any order."""

    #: frames the server lets this connection have in flight (it says so when the connection opens)
    window: int
    #: whether a frame or its result may vanish without a trace (an unreliable datachannel): then a frame
    #: past its deadline stops counting as in flight, or lost frames would fill the window for good
    lossy: bool = False

    async def pace(self, nbytes: int) -> None:  # noqa: B027 -- optional: most transports need no pacing
        """Wait until ``nbytes`` more may go on the link (a transport with its own flow control returns at once)."""

    @abstractmethod
    async def send(self, frame: pb.Frame) -> None:
        """Write one frame; raises TransportError when the connection is broken."""

    @abstractmethod
    def results(self) -> AsyncIterator[pb.Result]:
        """Results as they arrive; ends when the server ends the connection, raises TransportError on a break."""

    @abstractmethod
    async def close(self, graceful: bool) -> None:
        """End the connection: gracefully (the server answers what it holds first) or at once."""


class Transport(ABC):
    """Opens connections to one edge server. ``name`` is the registry key; ``framing`` the bytes it adds per message."""

    name: str
    framing: int

    @abstractmethod
    async def open(self) -> Connection:
        """A new connection, ready for frames; raises TransportError when the server refuses or cannot be reached."""

    async def close(self) -> None:  # noqa: B027 -- optional: a transport may hold nothing between connections
        """Release what the transport holds beyond its connections."""

    def wire_bytes(self, frame: pb.Frame) -> int:
        """Bytes a frame puts on the link, framing included: what the bandwidth monitor counts."""
        return frame.ByteSize() + self.framing
