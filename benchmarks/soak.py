"""Soak: N device streams for M minutes through a lossy emulated link, with server restarts.

    python benchmarks/soak.py [--streams 4] [--minutes 2] [--fps 10] [--restart-every 30] [--loss 1%]

A real edge-server process sits behind the userspace link emulator (rate, delay, loss); N
AsyncSplitClients send frames at --fps each, with a deadline. Every --restart-every seconds the
server is killed (alternately SIGKILL and SIGTERM) and started again on the same port. Counts:

- sent: frames handed to infer(); answered: frames that got a Result from the server in time (OK);
- missed: frames that ended without one (deadline passed, server gone), each with its reason;
- lost: frames that never ended at all; duplicated: frames that ended more than once.

The target is 0 lost and 0 duplicated, and the server's RSS flat after warm-up (sampled each second,
per server life). Prints a table and writes JSON (default benchmarks/results/soak.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from splitserve.data.samples import load_sample
from splitserve.device_client.client import AsyncSplitClient, ClientOptions
from splitserve.simulator.experiment import free_port
from splitserve.simulator.link import LinkConfig
from splitserve.simulator.proxy import LinkProxy
from splitserve.simulator.units import parse_fraction, parse_rate, parse_time_ms

BIN = Path(sys.executable).parent




def rss_mib(pid: int) -> float | None:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Server:
    """One edge-server life after another on the same port; RSS sampled per life."""

    def __init__(self, port: int, args: list[str]) -> None:
        self.port, self.args = port, args
        self.proc: subprocess.Popen | None = None
        self.lives: list[dict] = []

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "edge-server"), "--host", "127.0.0.1", "--port", str(self.port), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.lives.append({"started": time.monotonic(), "rss": []})

    def sample(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            rss = rss_mib(self.proc.pid)
            if rss is not None:
                self.lives[-1]["rss"].append((time.monotonic() - self.lives[-1]["started"], rss))

    def stop(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def device(i: int, address: str, args, images, end: float, outcomes: dict, sent: Counter) -> None:
    options = ClientOptions(deadline_ms=args.deadline_ms, policy=None, connect_timeout=120, max_backoff_s=1.0)
    async with AsyncSplitClient(address, args.model, options) as client:
        tasks = []
        n = 0
        t0 = time.monotonic()
        while time.monotonic() < end:
            key = (i, n)
            sent[i] += 1

            async def one(key=key, image=images[n % len(images)]) -> None:
                p = await client.infer(image)
                outcomes.setdefault(key, []).append(p)

            tasks.append(asyncio.create_task(one()))
            n += 1
            await asyncio.sleep(max(0.0, t0 + n / args.fps - time.monotonic()))
        await asyncio.gather(*tasks)


async def soak(args) -> dict:
    images, _ = load_sample("fmnist-test" if args.model == "fmnist-split" else "photos-224")
    server = Server(free_port(), ["--drain-timeout", "5"])
    server.start()
    link = LinkConfig(
        rate_bps=parse_rate(args.rate), delay_ms=parse_time_ms(args.delay), loss=parse_fraction(args.loss)
    )
    proxy = LinkProxy("127.0.0.1", server.port, link, link, seed=1)
    port = await proxy.start()
    await asyncio.sleep(args.warmup)  # the server loads its models
    outcomes: dict = {}
    sent: Counter = Counter()
    end = time.monotonic() + args.minutes * 60
    restarts = []

    async def chaos() -> None:
        k = 0
        while time.monotonic() < end - args.restart_every / 2:
            await asyncio.sleep(args.restart_every)
            if time.monotonic() >= end:
                break
            sig = signal.SIGKILL if k % 2 == 0 else signal.SIGTERM
            await asyncio.to_thread(server.stop, sig)
            restarts.append(signal.Signals(sig).name)
            server.start()
            k += 1

    async def sampler() -> None:
        while True:
            server.sample()
            await asyncio.sleep(1.0)

    sampling = asyncio.create_task(sampler())
    chaos_task = asyncio.create_task(chaos())
    t0 = time.monotonic()
    await asyncio.gather(*(device(i, f"127.0.0.1:{port}", args, images, end, outcomes, sent)
                           for i in range(args.streams)))  # fmt: skip
    elapsed = time.monotonic() - t0
    chaos_task.cancel()
    sampling.cancel()
    server.stop(signal.SIGTERM)
    await proxy.close()

    total_sent = sum(sent.values())
    ended = [ps for ps in outcomes.values()]
    statuses = Counter(ps[0].status for ps in ended)
    reasons = Counter(ps[0].error.split(" (")[0][:60] for ps in ended if not ps[0].ok)
    lives = []
    for life in server.lives:
        rss = [r for t, r in life["rss"]]
        warm = [r for t, r in life["rss"] if t >= args.rss_warmup]
        lives.append({"seconds": round(life["rss"][-1][0], 1) if life["rss"] else 0.0,
                      "peak_rss_mib": round(max(rss), 1) if rss else None,
                      "rss_after_warmup_mib": round(warm[0], 1) if warm else None,
                      "rss_end_mib": round(warm[-1], 1) if warm else None})  # fmt: skip
    return {
        "streams": args.streams, "minutes": args.minutes, "fps_per_stream": args.fps,
        "deadline_ms": args.deadline_ms, "link": {"rate": args.rate, "delay": args.delay, "loss": args.loss},
        "restarts": restarts, "elapsed_s": round(elapsed, 1),
        "sent": total_sent, "answered": statuses.get("OK", 0),
        "missed": total_sent - statuses.get("OK", 0) - (total_sent - len(ended)),
        "lost": total_sent - len(ended), "duplicated": sum(len(ps) - 1 for ps in ended),
        "statuses": dict(statuses), "miss_reasons": dict(reasons.most_common(6)),
        "peak_rss_mib": max((x["peak_rss_mib"] or 0.0) for x in lives), "server_lives": lives,
    }  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fmnist-split")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--fps", type=float, default=10.0, help="frames per second per stream")
    p.add_argument("--deadline-ms", type=int, default=1000)
    p.add_argument("--restart-every", type=float, default=30.0, help="seconds between server kills")
    p.add_argument("--rate", default="20mbps")
    p.add_argument("--delay", default="10ms")
    p.add_argument("--loss", default="1%")
    p.add_argument("--warmup", type=float, default=15.0, help="seconds for the first server to load")
    p.add_argument("--rss-warmup", type=float, default=20.0, help="seconds into a server life before RSS counts")
    p.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "soak.json")
    args = p.parse_args()
    result = asyncio.run(soak(args))
    print(f"soak: {result['streams']} streams x {result['minutes']} min at {result['fps_per_stream']} fps, "
          f"deadline {result['deadline_ms']} ms, link {args.rate} {args.delay} loss {args.loss}, "
          f"restarts {', '.join(result['restarts']) or 'none'}")  # fmt: skip
    print(f"{'sent':>8} {'answered':>9} {'missed':>7} {'lost':>5} {'duplicated':>10} {'peak RSS MiB':>13}")
    print(f"{result['sent']:>8} {result['answered']:>9} {result['missed']:>7} {result['lost']:>5} "
          f"{result['duplicated']:>10} {result['peak_rss_mib']:>13.1f}")  # fmt: skip
    print("server lives (s, peak / after warm-up / end RSS MiB):",
          "; ".join(f"{x['seconds']} s {x['peak_rss_mib']}/{x['rss_after_warmup_mib']}/{x['rss_end_mib']}"
                    for x in result["server_lives"]))  # fmt: skip
    if result["miss_reasons"]:
        print("misses:", result["miss_reasons"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["lost"] == 0 and result["duplicated"] == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
