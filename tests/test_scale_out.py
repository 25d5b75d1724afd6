"""Several edge-server replicas behind one target: devices spread over them, and one that
goes away (killed, or drained on scale-down) loses no frame.

The target lists both servers (`ipv4:127.0.0.1:A,127.0.0.1:B`), as a headless Kubernetes
Service does through DNS (`dns:///edge-headless:50051`); the client's channel balances
streams round-robin over every address (device_client/channel.py).
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request

import pytest
from conftest import ServerProcess, free_port, wait_healthy

from splitserve.data.samples import load_sample
from splitserve.device_client.client import AsyncSplitClient

pytestmark = pytest.mark.e2e
# Each device's channel starts its round-robin at a random server: with 16 devices, all on
# one of two servers happens once in 2^15 runs.
DEVICES = 16


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))  # fmt: skip


@pytest.fixture
def replicas():
    started: list[ServerProcess] = []

    def start(n: int, *args: str) -> list[ServerProcess]:
        for _ in range(n):
            server = ServerProcess([*args, "--metrics-port", str(free_port()), "--metrics-host", "127.0.0.1"],
                                   free_port())  # fmt: skip
            server.metrics_port = int(server.proc.args[server.proc.args.index("--metrics-port") + 1])
            started.append(server)
        for server in started:
            wait_healthy(server.port, server.proc)
        return started

    yield start
    for server in started:
        server.stop()


async def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def test_frames_spread_over_two_servers_and_killing_one_loses_none(replicas, fmnist):
    # frames wait up to 2 s for their batch, so both servers surely hold some when one dies
    a, b = replicas(2, "--max-delay-ms", "2000", "--max-batch", "256")
    target = f"ipv4:{a.address},{b.address}"
    images, _ = load_sample("fmnist-test")

    async def main():
        devices = [AsyncSplitClient(target, "fmnist-split", deadline_ms=60_000, max_backoff_s=0.5)
                   for _ in range(DEVICES)]  # fmt: skip
        for device in devices:
            await device.connect()
        try:
            pending = [asyncio.ensure_future(d.infer(images[(i * 3 + k) % len(images)]))
                       for i, d in enumerate(devices) for k in range(3)]  # fmt: skip
            inflight = "splitserve_inflight_frames"
            await wait_for(lambda: metric(a.metrics_port, inflight) > 0 and metric(b.metrics_port, inflight) > 0,
                           "both servers to hold frames")  # fmt: skip
            streams = [metric(s.metrics_port, "splitserve_active_streams") for s in (a, b)]
            a.proc.send_signal(signal.SIGKILL)  # a replica dies with frames in flight
            a.proc.wait(10)
            results = await asyncio.gather(*pending)
            survivor_streams = metric(b.metrics_port, "splitserve_active_streams")
            return streams, results, [d.reconnects for d in devices], survivor_streams
        finally:
            for device in devices:
                await device.close()

    streams, results, reconnects, survivor_streams = asyncio.run(main())
    assert sum(streams) == DEVICES and min(streams) >= 1, streams  # devices spread over both
    assert len(results) == 3 * DEVICES and len({r.frame_id for r in results}) <= 3 * DEVICES
    assert [r.status for r in results] == ["OK"] * len(results), {r.status: r.error for r in results if not r.ok}
    resent = [r for r in results if r.attempts >= 2]
    assert resent, "the frames the killed server held were sent again"
    assert sum(1 for n in reconnects if n) == streams[0]  # exactly the devices that were on the dead server
    assert survivor_streams == DEVICES  # every device now streams to the survivor


def test_a_drained_replica_hands_its_streams_over(replicas, fmnist):
    """Scale-down: SIGTERM drains one server; its devices carry on on the other, no frame lost."""
    a, b = replicas(2)
    target = f"ipv4:{a.address},{b.address}"
    images, _ = load_sample("fmnist-test")

    async def device_loop(device: AsyncSplitClient, stop: asyncio.Event) -> list:
        results = []
        i = 0
        while not stop.is_set() or i < 10:
            results.append(await device.infer(images[i % len(images)]))
            i += 1
            await asyncio.sleep(0.05)
        return results

    async def main():
        devices = [AsyncSplitClient(target, "fmnist-split", deadline_ms=60_000, max_backoff_s=0.5)
                   for _ in range(DEVICES)]  # fmt: skip
        for device in devices:
            await device.connect()
        stop = asyncio.Event()
        try:
            loops = [asyncio.ensure_future(device_loop(d, stop)) for d in devices]
            done = "splitserve_frames_completed_total"
            await wait_for(lambda: metric(a.metrics_port, done) >= 10 and metric(b.metrics_port, done) >= 10,
                           "traffic on both")  # fmt: skip
            streams = [metric(s.metrics_port, "splitserve_active_streams") for s in (a, b)]
            a.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(a.proc.wait, 60) == 0  # drained and stopped cleanly
            before = metric(b.metrics_port, done)
            await wait_for(lambda: metric(b.metrics_port, done) >= before + 2 * DEVICES,
                           "traffic to go on on the other server")  # fmt: skip
            moved = metric(b.metrics_port, "splitserve_active_streams")
            stop.set()
            return streams, moved, [r for loop in loops for r in await loop]
        finally:
            for device in devices:
                await device.close()

    streams, moved, results = asyncio.run(main())
    assert min(streams) >= 1, streams
    assert moved == DEVICES  # the drained server's devices reopened their streams on the other
    assert [r.status for r in results] == ["OK"] * len(results), {r.status: r.error for r in results if not r.ok}
    assert "drain" in a.stop()
