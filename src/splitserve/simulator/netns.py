"""``--netns`` mode: the kernel's real TCP over the emulated link.

Two network namespaces, "device" and "server", each get one end of the link: a
TUN device. This process holds both TUN file descriptors, reads every IP packet
one side sends, times it through the LinkEmulator of that direction (rate or
trace, delay, jitter, loss, droptail queue) and writes it into the other side.
Lost or queue-dropped packets are really gone, so TCP's own retransmission and
congestion control react as on a real link. Needs root (namespaces, TUN); this
kernel has no netem qdisc, which is why the shaping happens here.
"""

from __future__ import annotations

import fcntl
import heapq
import logging
import os
import select
import struct
import subprocess
import threading
import time
from dataclasses import dataclass

from splitserve.simulator.link import LinkConfig, link_pair

log = logging.getLogger("splitserve.simulator")
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000


class NetnsUnavailable(RuntimeError):
    """netns mode cannot run here (not root, no TUN, no `ip`); the message says which."""


def check_available() -> None:
    if os.geteuid() != 0:
        raise NetnsUnavailable("--netns needs root (network namespaces and TUN devices); run without --netns")
    if not os.path.exists("/dev/net/tun"):
        raise NetnsUnavailable("--netns needs /dev/net/tun")
    if subprocess.run(["ip", "-V"], capture_output=True).returncode != 0:
        raise NetnsUnavailable("--netns needs iproute2's `ip` command")


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    return fd


@dataclass
class Endpoint:
    namespace: str
    address: str

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace]


class NetnsLink:
    """Set up with ``start()``, tear down with ``close()`` (also on errors: namespaces are system-wide)."""

    def __init__(self, uplink: LinkConfig, downlink: LinkConfig, seed: int = 0, subnet: int | None = None) -> None:
        check_available()
        tag = f"{os.getpid() % 10000}"
        octet = subnet if subnet is not None else 100 + os.getpid() % 100
        self.device = Endpoint(f"ssdev{tag}", f"10.{octet}.0.1")
        self.server = Endpoint(f"sssrv{tag}", f"10.{octet}.0.2")
        self._tuns = (f"sstd{tag}", f"ssts{tag}")
        now = time.monotonic()
        self.up, self.down = link_pair(uplink, downlink, seed, start=now)
        self._fds: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        created = []
        try:
            for ns in (self.device.namespace, self.server.namespace):
                _ip("netns", "add", ns)
                created.append(ns)
            fd_dev, fd_srv = _open_tun(self._tuns[0]), _open_tun(self._tuns[1])
            self._fds = (fd_dev, fd_srv)
            for tun, end, peer in (
                (self._tuns[0], self.device, self.server),
                (self._tuns[1], self.server, self.device),
            ):
                _ip("link", "set", tun, "netns", end.namespace)
                _ip("-n", end.namespace, "addr", "add", end.address, "peer", peer.address, "dev", tun)
                _ip("-n", end.namespace, "link", "set", tun, "up")
                _ip("-n", end.namespace, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._relay, name="netns-link", daemon=True)
        self._thread.start()
        log.info("netns link up: %s (%s) <-> %s (%s)", self.device.namespace, self.device.address,
                 self.server.namespace, self.server.address)  # fmt: skip

    def _relay(self) -> None:
        assert self._fds is not None
        fd_dev, fd_srv = self._fds
        route = {fd_dev: (self.up, fd_srv), fd_srv: (self.down, fd_dev)}
        pending: list[tuple[float, int, int, bytes]] = []  # (deliver at, seq, out fd, packet)
        seq = 0
        while not self._stop.is_set():
            timeout = 0.05
            if pending:
                timeout = max(0.0, min(timeout, pending[0][0] - time.monotonic()))
            readable, _, _ = select.select([fd_dev, fd_srv], [], [], timeout)
            now = time.monotonic()
            for fd in readable:
                while True:
                    try:
                        packet = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    except OSError:
                        return
                    link, out = route[fd]
                    when = link.send_datagram(len(packet), now)
                    if when is not None:
                        heapq.heappush(pending, (when, seq, out, packet))
                        seq += 1
            now = time.monotonic()
            while pending and pending[0][0] <= now:
                _, _, out, packet = heapq.heappop(pending)
                try:
                    os.write(out, packet)
                except OSError:
                    pass

    def restart_links(self, start_unix: float) -> None:
        """Fresh link state for the next run, its clock starting at wall time ``start_unix``."""
        start = time.monotonic() + (start_unix - time.time())
        self.up.reset(start)
        self.down.reset(start)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._fds is not None:
            for fd in self._fds:
                os.close(fd)
            self._fds = None
        for ns in (self.device.namespace, self.server.namespace):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def __enter__(self) -> NetnsLink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
