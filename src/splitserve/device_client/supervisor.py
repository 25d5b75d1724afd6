"""The connection supervisor: keeps one connection to the server open, and writes the ledger's frames on it.

It opens a connection through the transport, writes frames in order within the server's
window (pacing where the transport paces), hands every result to the client, and when the
connection breaks puts the unanswered frames back in line and reconnects with exponential
backoff and jitter. Frames never wait on it: each has its own timer in the ledger, so a
server that dies and never comes back costs each frame its deadline, no more.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from splitserve.device_client.ledger import FrameLedger
from splitserve.device_client.transports import Connection, Transport, TransportError
from splitserve.proto import edge_inference_pb2 as pb

log = logging.getLogger("splitserve.device")


def reconnect_delay(attempt: int, max_backoff_s: float, jitter: float) -> float:
    """Seconds to wait before reconnect number ``attempt + 1`` (0: the link had just answered).

    Exponential from 0.1 s, capped at ``max_backoff_s``, times ``jitter`` in [0.5, 1] (random in
    the client) so that devices a server dropped together do not all come back at once. The
    fleet simulator (simulator/fleet) waits exactly this long.
    """
    return min(max_backoff_s, 0.1 * 2**attempt) * jitter


class ConnectionSupervisor:
    def __init__(self, transport: Transport, ledger: FrameLedger, target: str, max_backoff_s: float,
                 on_result: Callable[[pb.Result], None]) -> None:  # fmt: skip
        self.transport = transport
        self.ledger = ledger
        self.target = target
        self.max_backoff_s = max_backoff_s
        self.on_result = on_result
        self.reconnects = 0
        self.link_note = "not connected yet"  # why the link is down, for the frames that wait
        self.conn: Connection | None = None
        self.connected = asyncio.Event()
        self.tried = asyncio.Event()  # the first connection opened, or failed to
        self.closing = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="splitclient-stream")

    @property
    def lossy(self) -> bool:
        return self.conn is not None and self.conn.lossy

    def why_no_result(self, attempts: int) -> str:
        """Why a frame that got no result in time got none, as far as the client can tell."""
        if attempts == 0 and self.connected.is_set():  # the window was full, or the pacer held it
            return "never sent: no room on the link for it in time"
        if attempts == 0:
            return f"never sent: {self.link_note}"
        return "the server did not answer in time" if self.connected.is_set() else self.link_note

    async def _supervise(self) -> None:
        attempt = 0
        while not self.closing:
            reason, answered = await self._run_connection()
            self.connected.clear()
            self.link_note = f"the stream to {self.target} broke ({reason})"
            if self.closing:
                break
            attempt = 0 if answered else attempt + 1
            self.ledger.requeue()
            delay = reconnect_delay(attempt, self.max_backoff_s, random.uniform(0.5, 1.0))
            log.warning("stream to %s broke (%s); reconnecting in %.2f s", self.target, reason, delay)
            self.reconnects += 1
            await asyncio.sleep(delay)
        self.ledger.fail_all("the client closed")

    async def _run_connection(self) -> tuple[str, bool]:
        """One connection, from the server's hello (its window) until it ends: (why it ended, any results?)."""
        try:
            conn = await self.transport.open()
        except TransportError as exc:
            return str(exc), False
        finally:
            self.tried.set()
        self.conn = conn
        if self.closing:  # closed while it opened: nothing will be written on it
            await conn.close(graceful=False)
            return "the client closed", False
        self.ledger.window = conn.window
        self.connected.set()
        writer = asyncio.create_task(self._pump(conn), name="splitclient-writer")
        answered = False
        try:
            async for result in conn.results():
                answered = True
                self.on_result(result)
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
        ledger = self.ledger
        while True:
            entry, wait = ledger.next_to_write()
            if entry is None:
                ledger.wake.clear()
                try:
                    await asyncio.wait_for(ledger.wake.wait(), wait)
                except TimeoutError:
                    pass
                continue
            await conn.pace(self.transport.wire_bytes(entry.frame))
            now = time.monotonic()
            if ledger.too_late(entry, now):
                continue
            ledger.written(entry, now)
            try:
                await conn.send(entry.frame)
            except TransportError as exc:
                # the connection broke: the supervisor sends the frame again on the next one
                log.warning("sending frame %d failed (%s); it goes again on the next connection",
                            entry.frame_id, exc)  # fmt: skip
                return

    async def close(self) -> None:
        """End the connection (the server answers what it holds first, for a few seconds at most)."""
        self.closing = True
        if self.conn is not None:  # without a server to say goodbye to, at once
            await self.conn.close(graceful=self.connected.is_set())
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5.0)
            except TimeoutError:
                self._task.cancel()
        self.ledger.fail_all("the client closed")
        await self.transport.close()
