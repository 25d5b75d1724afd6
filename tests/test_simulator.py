"""The simulator with real sockets and processes: link fidelity, netns mode, simulate runs."""

import asyncio
import json
import os
import re
import subprocess
import time

import numpy as np
import pytest
from conftest import BIN

from splitserve.simulator.link import LinkConfig
from splitserve.simulator.proxy import LinkProxy


async def _echo_server():
    async def handle(reader, writer):
        while data := await reader.read(65536):
            if data.startswith(b"PING"):
                writer.write(data[:36])
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_proxy_rate_and_delay():
    async def main():
        server, port = await _echo_server()
        proxy = LinkProxy("127.0.0.1", port, LinkConfig(rate_bps=2e6, delay_ms=25), LinkConfig(delay_ms=25))
        pport = await proxy.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", pport)
        # round trips of tiny messages: 2 x 25 ms added
        rtts = []
        for _ in range(10):
            t0 = time.perf_counter()
            writer.write(b"PING" + bytes(32))
            await writer.drain()
            await reader.readexactly(36)
            rtts.append((time.perf_counter() - t0) * 1e3)
        # bulk: 250 kB at 2 Mbit/s = 1 s on the wire
        t0 = time.monotonic()
        writer.write(b"x" * 250_000)
        await writer.drain()
        while proxy.up.stats.bytes < 250_000 + 10 * 36:  # every byte has entered the link
            await asyncio.sleep(0.01)
        wire_s = proxy.up._last_delivery - t0 - 0.025
        writer.close()
        await proxy.close()
        server.close()
        return rtts, 250_000 * 8 / wire_s

    rtts, goodput = asyncio.run(main())
    assert 50 <= np.median(rtts) < 55
    assert goodput == pytest.approx(2e6, rel=0.05)


needs_netns = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/net/tun"), reason="netns mode needs root and /dev/net/tun"
)


@needs_netns
def test_netns_link_carries_kernel_tcp_at_the_emulated_rate():
    from splitserve.simulator.netns import NetnsLink

    with NetnsLink(LinkConfig(rate_bps=4e6, delay_ms=10), LinkConfig(rate_bps=4e6, delay_ms=10)) as link:
        sink = subprocess.Popen(link.server.exec_prefix() + [
            "python3", "-c",
            "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('{link.server.address}', 5001)); s.listen(1); c, _ = s.accept(); n = 0\n"
            "while True:\n    d = c.recv(65536)\n    if not d: break\n    n += len(d)\nc.sendall(str(n).encode())",
        ])  # fmt: skip
        time.sleep(0.5)
        out = subprocess.run(link.device.exec_prefix() + [
            "python3", "-c",
            "import socket, time\n"
            f"s = socket.create_connection(('{link.server.address}', 5001)); t = time.time()\n"
            "s.sendall(b'x' * 1_500_000); s.shutdown(socket.SHUT_WR); print(s.recv(64).decode(), time.time() - t)",
        ], capture_output=True, text=True, timeout=60)  # fmt: skip
        sink.wait(10)
    n, seconds = out.stdout.split()
    assert int(n) == 1_500_000
    goodput = 1_500_000 * 8 / float(seconds)
    assert 0.85 * 4e6 < goodput < 1.02 * 4e6  # TCP/IP headers and slow start cost a little


def run_simulate(tmp_path, *args):
    out = tmp_path / "sim.json"
    proc = subprocess.run([str(BIN / "simulate"), *args, "--json", str(out)], capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout + proc.stderr


@pytest.mark.e2e
def test_short_simulate_run_with_real_processes(tmp_path):
    result, stdout = run_simulate(
        tmp_path, "--model", "fmnist-split", "--bandwidth", "300kbps", "--delay", "20ms", "--frames", "20",
        "--fps", "10", "--deadline", "2s", "--strategies", "local,jpeg,split:0,adaptive",
        "--plot", str(tmp_path / "sim.png"),
    )  # fmt: skip
    names = [s["name"] for s in result["strategies"]]
    assert names == ["local", "jpeg", "split:0", "adaptive"]
    rows = {s["name"]: s for s in result["strategies"]}
    assert rows["local"]["bytes_per_frame"] == 0 and rows["jpeg"]["bytes_per_frame"] > 10 * rows["split:0"][
        "bytes_per_frame"]  # fmt: skip
    for row in result["strategies"]:
        assert row["ok"] == 20 and row["latency_ms"]["p50"] > 0 and 0 <= row["accuracy"] <= 1
    # over a 20 ms link every offloaded frame takes at least the round trip
    assert rows["jpeg"]["latency_ms"]["p50"] > 40 and rows["split:0"]["latency_ms"]["p50"] > 40
    assert rows["jpeg"]["latency_ms"]["p50"] > rows["split:0"]["latency_ms"]["p50"]
    assert "strategy" in stdout and (tmp_path / "sim.png").stat().st_size > 10_000
    assert result["link"]["uplink"]["rate_bps"] == 300_000
    # progress: one line per strategy as it ends, also when stderr is not a terminal (as here)
    done = re.findall(r"simulate: \[(\d)/4\] ([\w:]+): p95", stdout)
    assert done == [("1", "local"), ("2", "jpeg"), ("3", "split:0"), ("4", "adaptive")], stdout[-2000:]
    # the plot's lower panel draws these: split and adaptive frames carry the bandwidth estimate
    for name in ("split:0", "adaptive"):
        estimates = [p["bw_bps"] for p in result["timeline"][name]]
        assert sum(1 for e in estimates if e and e > 0) >= len(estimates) - 3, (name, estimates)


@pytest.mark.e2e
def test_analytic_model_agrees_with_the_emulated_run(tmp_path):
    common = ["--model", "fmnist-split", "--bandwidth", "150kbps", "--delay", "30ms", "--frames", "30",
              "--strategies", "jpeg,split:3"]  # fmt: skip
    emulated, _ = run_simulate(tmp_path, *common)
    analytic, _ = run_simulate(tmp_path, *common, "--analytic")
    for e, a in zip(emulated["strategies"], analytic["strategies"], strict=True):
        assert e["name"] == a["name"]
        assert a["bytes_per_frame"] == pytest.approx(e["bytes_per_frame"], rel=0.1)
        # The link's share of the latency must agree: on a busy machine the emulated run's own compute
        # (device head, server) stretches, which is not what the analytic model is checked for. 10 ms of
        # slack still fails a model that forgets the 60 ms round trip or JPEG's ~30 ms on the wire.
        e_link = e["latency_ms"]["p50"] - e["device_ms"]
        a_link = a["latency_ms"]["p50"] - a["device_ms"]
        assert a_link == pytest.approx(e_link, rel=0.2, abs=10), e["name"]


@pytest.mark.slow
def test_sweep_names_crossovers(tmp_path):
    result, stdout = run_simulate(
        tmp_path, "sweep", "--model", "fmnist-split", "--bandwidth", "0.02mbps..20mbps", "--points", "8",
        "--frames", "40", "--strategies", "local,jpeg,split:3,adaptive", "--plot", str(tmp_path / "sweep.png"),
    )  # fmt: skip
    assert len(result["bandwidths_bps"]) == 8 and set(result["p95_ms"]) == {"local", "jpeg", "split:3", "adaptive"}
    # more bandwidth never makes offloading slower
    jpeg = result["p95_ms"]["jpeg"]
    assert jpeg[0] > jpeg[-1]
    assert isinstance(result["crossovers"], list) and (tmp_path / "sweep.png").is_file()
    assert "crossover" in stdout or not result["crossovers"]


@pytest.mark.slow
def test_bad_arguments_are_clear(tmp_path):
    for args, message in (
        (["--bandwidth", "fast"], "cannot read bandwidth"),
        (["--strategies", "teleport"], "unknown strategy"),
        (["--trace", str(tmp_path / "none.up")], "trace not found"),
        (["--model", "nope"], "unknown model"),
    ):
        proc = subprocess.run([str(BIN / "simulate"), *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
