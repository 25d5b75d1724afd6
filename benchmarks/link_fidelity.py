"""How faithfully the userspace link emulator (TCP proxy) reproduces the link it is asked for.

    python benchmarks/link_fidelity.py [--rate 2mbps] [--delay 20ms] [--loss 1%]

- goodput: a bulk TCP transfer through the proxy vs the configured rate;
- added delay: small request/response round trips through the proxy vs 2 x one-way delay
  (the emulator adds it once each way), minus the same round trip without the proxy;
- loss: the fraction of segments the loss model hit vs the configured rate, with its
  binomial sampling error;
- trace playback: goodput through a generated step trace vs the trace's own rates.

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

from splitserve.simulator.link import LinkConfig
from splitserve.simulator.proxy import LinkProxy
from splitserve.simulator.traces import make_trace
from splitserve.simulator.units import parse_fraction, parse_rate, parse_time_ms


async def _sink_server(received: dict | None = None) -> tuple[asyncio.base_events.Server, int]:
    """Echoes PINGs; counts bulk bytes into ``received`` with the time the last ones arrived."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if data.startswith(b"PING"):
                writer.write(data[:64])
                await writer.drain()
            elif received is not None:
                received["bytes"] = received.get("bytes", 0) + len(data)
                received["at"] = time.monotonic()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def goodput(rate: float, delay_ms: float, nbytes: int, trace=None) -> tuple[float, LinkProxy]:  # type: ignore[no-untyped-def]
    received: dict = {}
    sink, port = await _sink_server(received)
    up = LinkConfig(rate_bps=None if trace else rate, trace=trace, delay_ms=delay_ms)
    proxy = LinkProxy("127.0.0.1", port, up, LinkConfig(delay_ms=delay_ms))
    pport = await proxy.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", pport)
    t0 = time.monotonic()
    for sent in range(0, nbytes, 65536):
        writer.write(b"x" * min(65536, nbytes - sent))
        await writer.drain()
    # measured where the bytes arrive: the sink's clock when the last byte came out of the proxy
    while received.get("bytes", 0) < nbytes:
        await asyncio.sleep(0.001)
    elapsed = received["at"] - t0 - delay_ms / 1e3
    writer.close()
    await proxy.close()
    sink.close()
    return nbytes * 8 / elapsed, proxy


async def rtts(delay_ms: float, n: int, through_proxy: bool, loss: float = 0.0) -> tuple[list[float], LinkProxy | None]:
    sink, port = await _sink_server()
    proxy = None
    target = port
    if through_proxy:
        cfg = LinkConfig(rate_bps=100e6, delay_ms=delay_ms, loss=loss)
        proxy = LinkProxy("127.0.0.1", port, cfg, LinkConfig(rate_bps=100e6, delay_ms=delay_ms), seed=3)
        target = await proxy.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", target)
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        writer.write(b"PING" + i.to_bytes(4, "big") * 8)
        await writer.drain()
        await reader.readexactly(36)
        samples.append((time.perf_counter() - t0) * 1e3)
    writer.close()
    if proxy:
        await proxy.close()
    sink.close()
    return samples, proxy


async def run(args: argparse.Namespace) -> dict:
    rate, delay, loss = parse_rate(args.rate), parse_time_ms(args.delay), parse_fraction(args.loss)
    measured_rate, _ = await goodput(rate, delay, int(rate / 8 * args.seconds))
    base, _ = await rtts(delay, 200, False)
    shaped, _ = await rtts(delay, 200, True)
    added = float(np.median(shaped) - np.median(base))
    _, lossy = await rtts(delay, 2000, True, loss)
    assert lossy is not None
    hits, n = lossy.up.stats.lost, lossy.up.stats.packets
    trace = make_trace([(3.0, 4e6), (3.0, 1e6)])
    steps = []
    for rate_step, seconds in ((4e6, 1.5), (1e6, 1.0)):
        r, _ = await goodput(rate_step, 0.0, int(rate_step / 8 * seconds), make_trace([(10.0, rate_step)]))
        steps.append({"trace_rate_bps": rate_step, "goodput_bps": r})
    return {
        "rate_bps": rate, "goodput_bps": measured_rate, "goodput_error": measured_rate / rate - 1,
        "delay_ms": delay, "added_rtt_ms": added, "expected_added_rtt_ms": 2 * delay,
        "added_delay_error_ms": added - 2 * delay,
        "loss": loss, "loss_measured": hits / n if n else 0.0, "loss_packets": n,
        "loss_sampling_sd": float(np.sqrt(loss * (1 - loss) / max(n, 1))),
        "trace_steps": steps, "trace_mean_rate_bps": trace.mean_rate_bps,
    }  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", default="2mbps")
    p.add_argument("--delay", default="20ms")
    p.add_argument("--loss", default="1%")
    p.add_argument("--seconds", type=float, default=4.0, help="length of the bulk transfer at the link rate")
    p.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "link_fidelity.json")
    args = p.parse_args()
    r = asyncio.run(run(args))
    print(f"{'check':<28}{'configured':>14}{'measured':>14}{'error':>12}")
    print(f"{'goodput (Mbit/s)':<28}{r['rate_bps'] / 1e6:>14.3f}{r['goodput_bps'] / 1e6:>14.3f}"
          f"{100 * r['goodput_error']:>11.2f}%")  # fmt: skip
    print(f"{'added round trip (ms)':<28}{r['expected_added_rtt_ms']:>14.2f}{r['added_rtt_ms']:>14.2f}"
          f"{r['added_delay_error_ms']:>10.2f}ms")  # fmt: skip
    print(f"{'segment loss':<28}{r['loss']:>14.4f}{r['loss_measured']:>14.4f}"
          f"{(r['loss_measured'] - r['loss']) / max(r['loss_sampling_sd'], 1e-12):>10.2f}sd")  # fmt: skip
    for s in r["trace_steps"]:
        print(f"{'trace step (Mbit/s)':<28}{s['trace_rate_bps'] / 1e6:>14.3f}{s['goodput_bps'] / 1e6:>14.3f}"
              f"{100 * (s['goodput_bps'] / s['trace_rate_bps'] - 1):>11.2f}%")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
