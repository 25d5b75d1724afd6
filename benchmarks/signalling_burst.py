"""Signalling under abuse: offers that never open, and peers opened and dropped, against one edge server.

    python benchmarks/signalling_burst.py [--idle-offers 1000] [--peers 500] [--max-streams 0]

A real ``edge-server --http-port`` on loopback. Two bursts over WHIP (``POST /v1/whip``), 50 at a time:

1. ``--idle-offers`` SDP offers whose peers never start ICE (a device that signals and vanishes): each
   gets an answer or a clear refusal, and the server closes every such peer after its open timeout;
2. ``--peers`` real peers (aiortc) that open their datachannels and then close at once.

Each burst runs ``--rounds`` times. After each: the HTTP statuses, the peers still open
(``splitserve_active_streams``), the server's RSS right after the burst and 20 s later, and whether it still
answers a frame. Targets: no 5xx but 503 (``--max-streams``), 0 peers left open, RSS not growing from the
first round to the last (the first burst's high-water mark stays with the allocator; a leak would grow with
every burst), the server SERVING.
Writes JSON (default benchmarks/results/signalling_burst.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from soak import rss_mib  # noqa: E402
from test_edge_server_http import offer_sdp  # noqa: E402 -- a browser-shaped offer, as the HTTP tests make it

from splitserve.simulator.experiment import free_port  # noqa: E402

BIN = Path(sys.executable).parent
CONCURRENCY = 50


async def idle_offers(base: str, n: int) -> Counter:
    """``n`` offers (one SDP, so no ICE ever reaches the server's peers), ``CONCURRENCY`` at a time."""
    sdp = await offer_sdp()
    statuses: Counter = Counter()
    gate = asyncio.Semaphore(CONCURRENCY)
    async with aiohttp.ClientSession() as http:

        async def one() -> None:
            try:
                async with gate, http.post(f"{base}/v1/whip", data=sdp, headers={"Content-Type": "application/sdp"},
                                           timeout=aiohttp.ClientTimeout(total=30)) as r:  # fmt: skip
                    statuses[r.status] += 1
                    await r.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                statuses[f"no answer ({type(exc).__name__})"] += 1

        await asyncio.gather(*(one() for _ in range(n)))
    return statuses


async def open_and_drop(base: str, n: int) -> Counter:
    """``n`` real peers: signal over WHIP, open both datachannels, close at once."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from splitserve.datachannel import FRAMES_CHANNEL, RESULTS_CHANNEL

    outcomes: Counter = Counter()
    gate = asyncio.Semaphore(CONCURRENCY)
    async with aiohttp.ClientSession() as http:

        async def one() -> None:
            async with gate:
                pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
                try:
                    frames = pc.createDataChannel(FRAMES_CHANNEL, ordered=False)
                    pc.createDataChannel(RESULTS_CHANNEL, ordered=False)
                    opened = asyncio.Event()
                    frames.on("open", opened.set)
                    await pc.setLocalDescription(await pc.createOffer())
                    headers = {"Content-Type": "application/sdp"}
                    try:
                        async with http.post(f"{base}/v1/whip", data=pc.localDescription.sdp, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=30)) as r:  # fmt: skip
                            text = await r.text()
                            if r.status != 201:
                                outcomes[f"HTTP {r.status}"] += 1
                                return
                    except (TimeoutError, aiohttp.ClientError) as exc:
                        outcomes[f"no answer ({type(exc).__name__})"] += 1
                        return
                    await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
                    try:
                        await asyncio.wait_for(opened.wait(), 30)
                        outcomes["opened"] += 1
                    except TimeoutError:
                        outcomes["never opened"] += 1
                finally:
                    await pc.close()

        await asyncio.gather(*(one() for _ in range(n)))
    return outcomes


def metric(port: int, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{"))


def answers_a_frame(address: str) -> bool:
    from splitserve.data.samples import load_sample
    from splitserve.device_client import ClientOptions, SplitClient

    images, _ = load_sample("fmnist-test")
    try:
        with SplitClient(address, "fmnist-split", ClientOptions(deadline_ms=5000, connect_timeout=30)) as client:
            return client.infer(images[0]).ok
    except Exception:  # noqa: BLE001 -- any failure to get an answer is the finding
        return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--idle-offers", type=int, default=1000)
    p.add_argument("--peers", type=int, default=500)
    p.add_argument("--max-streams", type=int, default=0, help="the server's --max-streams (default 0: none)")
    p.add_argument("--settle", type=float, default=20.0, help="seconds to wait after each burst")
    p.add_argument("--rounds", type=int, default=3, help="bursts of each kind, one after another")
    p.add_argument("--out", type=Path, default=HERE / "results" / "signalling_burst.json")
    args = p.parse_args()
    port, http_port, metrics_port = free_port(), free_port(), free_port()
    cmd = [str(BIN / "edge-server"), "--host", "127.0.0.1", "--port", str(port), "--http-port", str(http_port),
           "--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1"]  # fmt: skip
    if args.max_streams:
        cmd += ["--max-streams", str(args.max_streams)]
    # the server's log goes to a file: a pipe nobody reads fills after ~1,000 lines and then blocks
    # the server's next log write, and with it the event loop (the "wedge" this benchmark once reported)
    log_file = tempfile.TemporaryFile("w+")
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_file, text=True)
    base, address = f"http://127.0.0.1:{http_port}", f"127.0.0.1:{port}"
    report: dict = {"idle_offers": args.idle_offers, "peers": args.peers, "max_streams": args.max_streams}
    try:
        end = time.monotonic() + 120
        while True:
            try:
                metric(metrics_port, "splitserve_active_streams")
                break
            except OSError:
                if time.monotonic() > end or server.poll() is not None:
                    print("the server did not start", file=sys.stderr)
                    return 1
                time.sleep(0.5)
        assert answers_a_frame(address)
        report["rss_start_mib"] = rss_mib(server.pid)
        for name, burst, n in (("idle_offers", idle_offers, args.idle_offers), ("open_and_drop", open_and_drop,
                                                                                args.peers)):  # fmt: skip
            rounds = []
            for _ in range(args.rounds):
                t0 = time.monotonic()
                outcomes = asyncio.run(burst(base, n))
                took = time.monotonic() - t0
                rss_after = rss_mib(server.pid)
                open_after = metric(metrics_port, "splitserve_active_streams")
                time.sleep(args.settle)
                row = {
                    "outcomes": {str(k): v for k, v in outcomes.items()}, "seconds": round(took, 1),
                    "rss_after_mib": rss_after, "open_after": open_after,
                    "rss_settled_mib": rss_mib(server.pid),
                    "open_settled": metric(metrics_port, "splitserve_active_streams"),
                    "answers_a_frame": answers_a_frame(address), "server_alive": server.poll() is None,
                }  # fmt: skip
                rounds.append(row)
                print(f"{name}, round {len(rounds)}: {row}", flush=True)
            report[name] = rounds
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log_file.seek(0)
        err = log_file.read()
    report["tracebacks_in_server_log"] = err.count("Traceback")
    checks = []
    for name in ("idle_offers", "open_and_drop"):
        rounds = report.get(name)
        if rounds:
            bad = sorted({k for r in rounds for k in r["outcomes"] if k not in ("201", "503", "opened", "HTTP 503")})
            # the first burst leaves the allocator holding what 1,000 peers at once took (glibc keeps it);
            # a leak shows as growth from one burst to the next
            grew = rounds[-1]["rss_settled_mib"] - rounds[0]["rss_settled_mib"]
            checks += [(f"{name}: only 201 / 503 / opened", not bad),
                       (f"{name}: 0 peers left after every round", all(r["open_settled"] == 0 for r in rounds)),
                       (f"{name}: RSS grows < 50 MiB from the first round to the last ({len(rounds)} rounds)",
                        grew < 50),
                       (f"{name}: still answers after every round",
                        all(r["answers_a_frame"] and r["server_alive"] for r in rounds))]  # fmt: skip
    checks.append(("no traceback in the server's log", report["tracebacks_in_server_log"] == 0))
    report["checks"] = [{"check": c, "pass": bool(ok)} for c, ok in checks]
    print(f"\nRSS at the start {report['rss_start_mib']:.0f} MiB")
    for c, ok in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {c}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
