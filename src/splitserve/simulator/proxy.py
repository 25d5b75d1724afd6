"""Userspace link emulation: a TCP proxy between the real client and the real server.

Everything the client sends goes through an uplink LinkEmulator, everything the
server sends back through a downlink one; bytes are cut into MTU-sized segments
and released at the times the link model gives them (see link.py for how loss
and queue limits act on a TCP byte stream). Portable, no root needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from splitserve.simulator.link import LinkConfig, LinkEmulator, link_pair

log = logging.getLogger("splitserve.simulator")
_READ = 64 * 1024


@dataclass
class ProxyStats:
    connections: int = 0


class LinkProxy:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        uplink: LinkConfig,
        downlink: LinkConfig,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        seed: int = 0,
        start: float | None = None,
    ) -> None:
        """``start``: time.monotonic() at which the links' clocks (trace position 0) begin; default now."""
        self.target = (target_host, target_port)
        self.listen = (listen_host, listen_port)
        now = time.monotonic() if start is None else start
        # One emulator per direction, shared by every connection: they share the link.
        self.up, self.down = link_pair(uplink, downlink, seed, start=now)
        self.stats = ProxyStats()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.port = listen_port

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, *self.listen)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await task

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError as exc:
            log.warning("proxy: cannot reach %s:%d: %s", *self.target, exc)
            client_writer.close()
            return
        pumps = [
            asyncio.create_task(self._pump(client_reader, server_writer, self.up)),
            asyncio.create_task(self._pump(server_reader, client_writer, self.down)),
        ]
        for t in pumps:
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for t in pumps:
            t.cancel()
        for w in (client_writer, server_writer):
            w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: LinkEmulator) -> None:
        """Read from src, release each segment to dst at its emulated delivery time."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        mtu = link.cfg.mtu

        async def deliver() -> None:
            while True:
                item = await queue.get()
                if item is None:
                    with contextlib.suppress(OSError):
                        dst.write_eof()
                    return
                when, data = item
                delay = when - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                dst.write(data)
                if queue.empty():
                    await dst.drain()

        writer = loop.create_task(deliver())
        try:
            while True:
                if link.cfg.queue_bytes:  # full queue: stop reading, let TCP push back on the sender
                    while link.backlog_bytes(time.monotonic()) >= link.cfg.queue_bytes:
                        await asyncio.sleep(0.001)
                data = await src.read(_READ)
                if not data:
                    break
                now = time.monotonic()
                for i in range(0, len(data), mtu):
                    segment = data[i : i + mtu]
                    queue.put_nowait((link.send_stream(len(segment), now), segment))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait(None)
            with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
                await writer
