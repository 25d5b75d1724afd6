"""edge-server --max-connection-age: streams end after a while and devices come back through the balancer."""

from __future__ import annotations

import asyncio

from splitserve.data.samples import load_sample
from splitserve.device_client.client import AsyncSplitClient, ClientOptions


def test_aged_streams_reconnect_without_losing_a_frame(start_server) -> None:
    server = start_server("--max-connection-age", "1")
    images, _ = load_sample("fmnist-test")

    async def run() -> tuple[list, int]:
        options = ClientOptions(deadline_ms=3000, policy=None, max_backoff_s=1.0)
        async with AsyncSplitClient(server.address, "fmnist-split", options) as client:
            predictions = []
            for i in range(80):  # 8 s: the stream moves every ~3 s (1 s of age, 2 s of grace)
                predictions.append(await client.infer(images[i]))
                await asyncio.sleep(0.1)
            return predictions, client.reconnects

    predictions, reconnects = asyncio.run(run())
    assert reconnects >= 2
    assert [p.status for p in predictions] == ["OK"] * 80
