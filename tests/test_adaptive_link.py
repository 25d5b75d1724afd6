"""The adaptive client over the emulated link: a step trace down and back up (real server, real sockets)."""

import asyncio
import time

import numpy as np
import pytest

from splitserve.data.samples import load_sample
from splitserve.device_client.client import AsyncSplitClient
from splitserve.simulator.link import LinkConfig
from splitserve.simulator.proxy import LinkProxy
from splitserve.simulator.traces import step_trace

pytestmark = pytest.mark.e2e

FAST, SLOW = 1e6, 24e3  # 24 kbit/s: two 1500-byte delivery opportunities a second
PHASES = ((5.0, FAST), (5.0, SLOW), (6.0, FAST))


def test_width_goes_down_with_the_link_and_up_again_when_it_recovers(start_server):
    server = start_server("--max-delay-ms", "2")
    images, _ = load_sample("fmnist-test")
    trace = step_trace(PHASES)
    fps = 10.0

    async def main():
        port = int(server.address.rsplit(":", 1)[1])
        proxy = LinkProxy("127.0.0.1", port, LinkConfig(trace=trace, delay_ms=10),
                          LinkConfig(rate_bps=10e6, delay_ms=10))  # fmt: skip
        pport = await proxy.start()
        try:
            async with AsyncSplitClient(f"127.0.0.1:{pport}", "fmnist-split", policy="adaptive",
                                        deadline_ms=150) as client:  # fmt: skip
                assert client.policy is not None and client.policy.local_ms is not None
                proxy.up.reset(time.monotonic())  # the trace starts with the first frame
                t0 = time.monotonic()
                tasks = []
                for i in range(int(sum(d for d, _ in PHASES) * fps)):
                    await asyncio.sleep(max(0.0, t0 + i / fps - time.monotonic()))
                    tasks.append((time.monotonic() - t0, asyncio.create_task(client.infer(images[i % len(images)]))))
                return [(t, await task) for t, task in tasks]
        finally:
            await proxy.close()

    frames = asyncio.run(main())
    # every frame ended, and the ones that were computed here or answered are right ones
    assert all(p.status in ("OK", "DEADLINE_EXCEEDED") for _, p in frames)

    def phase(lo: float, hi: float) -> list:
        return [p for t, p in frames if lo <= t < hi]

    fast, slow, back = phase(2.0, 5.0), phase(6.5, 10.0), phase(13.0, 16.0)
    assert np.mean([not p.local and p.width == 3 for p in fast]) > 0.8  # a fast link: the widest width
    # two packets a second cannot carry ten frames: the client runs them here (or at most narrower)
    assert np.mean([p.local or p.width < 3 for p in slow]) > 0.8
    assert any(p.local for p in slow)
    # the rate comes back at 10 s: within the 3 s after that the width is back up and stays up
    assert all(not p.local and p.width == 3 for p in back[-10:])
    assert np.mean([not p.local and p.width == 3 for p in back]) > 0.8
    assert back[-1].bandwidth_bps is not None and back[-1].bandwidth_bps > 0.1e6
