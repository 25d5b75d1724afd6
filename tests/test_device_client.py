"""The device SDK against real edge-server processes: asyncio API, pipelining, reconnects."""

import asyncio
import signal
import subprocess
import time

import numpy as np
import pytest
from conftest import ServerProcess, free_port, wait_healthy

from splitserve.data.samples import load_sample
from splitserve.device_client.client import AsyncSplitClient, SplitClient

pytestmark = pytest.mark.e2e


def test_async_client_pipelines_and_matches_results(start_server, fmnist):
    server = start_server("--max-delay-ms", "5")
    images, labels = load_sample("fmnist-test")

    async def main():
        async with AsyncSplitClient(server.address, "fmnist-split") as client:
            preds = await asyncio.gather(*(client.infer(images[i], width=i % 4) for i in range(64)))
            local = await client.infer_local(images[0])
        return preds, local

    preds, local = asyncio.run(main())
    assert [p.frame_id for p in preds] == sorted(p.frame_id for p in preds)
    assert all(p.ok for p in preds)
    assert [p.width for p in preds] == [i % 4 for i in range(64)]
    # narrow widths send fewer bytes on average
    sizes = [np.mean([p.payload_bytes for p in preds if p.width == w]) for w in range(4)]
    assert sizes[0] < sizes[3]
    assert local.local and local.ok and local.label in fmnist.labels
    acc = np.mean([p.index == labels[i] for i, p in enumerate(preds) if p.width == 3])
    assert acc > 0.6


def test_unreachable_server_is_a_clear_error():
    from splitserve.device_client.client import ClientError

    with pytest.raises(ClientError, match="cannot reach the edge server"):
        SplitClient(f"127.0.0.1:{free_port()}", "fmnist-split", connect_timeout=1.0)


def test_reconnects_after_a_server_restart_and_accounts_for_every_frame(fmnist):
    port = free_port()
    server = ServerProcess([], port)
    wait_healthy(port, server.proc)
    images, _ = load_sample("fmnist-test")
    client = SplitClient(f"127.0.0.1:{port}", "fmnist-split", deadline_ms=3000, max_backoff_s=0.5)
    futures = []
    try:
        for i in range(20):
            futures.append(client.submit(images[i]))
            time.sleep(0.01)
        server.proc.send_signal(signal.SIGKILL)  # the link dies with frames in flight
        server.proc.wait(10)
        for i in range(20, 30):
            futures.append(client.submit(images[i]))
        time.sleep(0.5)
        server = ServerProcess([], port)
        wait_healthy(port, server.proc)
        deadline = time.time() + 30
        while not client.client.connected and time.time() < deadline:
            time.sleep(0.1)
        for i in range(30, 50):
            futures.append(client.submit(images[i]))
        results = [f.result(timeout=60) for f in futures]
    finally:
        client.close()
        server.stop()
    assert len(results) == 50 and len({r.frame_id for r in results}) == 50  # exactly one outcome each
    for r in results:
        assert r.status == "OK" or (r.status in ("FAILED", "DEADLINE_EXCEEDED") and r.error), r
    assert all(r.ok for r in results[30:])  # after the restart everything works again
    assert client.client.reconnects >= 1
    assert any(r.attempts > 1 and r.ok for r in results[:30]) or all(r.ok for r in results[:20])


def test_cli_json_and_records(start_server, tmp_path):
    from conftest import BIN

    server = start_server()
    out, rec = tmp_path / "s.json", tmp_path / "r.jsonl"
    proc = subprocess.run(
        [str(BIN / "device-client"), "--server", server.address, "--frames", "20", "--policy", "adaptive",
         "--deadline-ms", "200", "--fps", "50", "--json", str(out), "--records", str(rec)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    import json

    summary = json.loads(out.read_text())
    assert summary["frames"] == 20 and summary["policy"] == "adaptive"
    lines = [json.loads(x) for x in rec.read_text().splitlines()]
    assert len(lines) == 20 and {"latency_ms", "width", "bw_bps", "status"} <= set(lines[0])
