"""``device-client``: run frames through an edge server and summarize what came back.

    device-client --server localhost:50051 --model fmnist-split --frames 200 --json out.json
    device-client --server edge:50051 --policy adaptive --deadline-ms 150 --fps 10 --records frames.jsonl
    device-client --server edge:50051 --transport webrtc --deadline-ms 150 --fps 10   # datachannel, lossy links

Frames come from the sample shipped with the model (real test images with
labels), so accuracy is measured, not assumed. With ``--fps`` frames are
captured at that rate whatever the link does (a camera does not wait); without
it, up to ``--concurrency`` frames are in flight at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

from splitserve.codecs import CODEC_IDS, codec_kind
from splitserve.device_client.transports import TRANSPORTS
from splitserve.models.zoo import DEFAULT_MODEL
from splitserve.timing import latency_summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="device-client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--server", required=True,
                   help="edge server HOST:PORT; several replicas: dns:///NAME:PORT (every address NAME resolves "
                        "to) or ipv4:HOST:PORT,HOST:PORT; streams are balanced round-robin")  # fmt: skip
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or bundle directory (default {DEFAULT_MODEL})")
    p.add_argument("--version", default="", help="model version (default: the newest)")
    p.add_argument("--frames", type=int, default=100, help="how many frames to send (default 100)")
    p.add_argument("--codec", default="entropic", help=" | ".join(CODEC_IDS))
    p.add_argument("--quality", type=int, default=75, help="JPEG / WebP quality (default 75)")
    p.add_argument("--width", type=int, default=-1, help="width index for the entropic codec (default: widest)")
    p.add_argument("--policy", default=None,
                   help="choose the width per frame: fixed:W | adaptive | local (overrides --width)")  # fmt: skip
    p.add_argument("--deadline-ms", type=int, default=0, help="per-frame deadline (default 0: none)")
    p.add_argument("--fps", type=float, default=0.0, help="capture rate; 0: as fast as --concurrency allows")
    p.add_argument("--concurrency", type=int, default=1, help="frames in flight at once without --fps (default 1)")
    p.add_argument("--slowdown", type=float, default=1.0,
                   help="emulate a slower device: its compute takes this many times longer (default 1)")  # fmt: skip
    p.add_argument("--sample", default="", help="sample to draw frames from (default: the model's own)")
    p.add_argument("--fetch", action="store_true", help="download the head from the server (GetHead)")
    p.add_argument("--runtime", default="auto", choices=("auto", "torch", "onnx"),
                   help="head runtime: torch, or onnxruntime (no torch); auto: torch when installed")  # fmt: skip
    p.add_argument("--json", type=Path, help="write the summary as JSON here")
    p.add_argument("--records", type=Path, help="write one JSON line per frame here")
    p.add_argument("--token", default="", help="bearer token")
    p.add_argument("--tls", action="store_true", help="use TLS (system roots unless --ca-cert)")
    p.add_argument("--ca-cert", default="", help="PEM CA of the server certificate")
    p.add_argument("--client-cert", default="", help="PEM client certificate (mutual TLS)")
    p.add_argument("--client-key", default="", help="PEM client key (mutual TLS)")
    p.add_argument("--server-name", default="", help="name to check the server certificate against")
    p.add_argument("--transport", default="grpc",
                   help="grpc (one HTTP/2 stream) | webrtc (an unordered datachannel: a lost packet costs one frame, "
                        "not the frames behind it)")  # fmt: skip
    p.add_argument(
        "--frame-retransmits",
        type=int,
        default=None,
        help="webrtc: retransmit a frame at most this often (default: while its deadline allows)",
    )
    p.add_argument("--frame-copies", type=int, default=None, choices=(1, 2),
                   help="webrtc: send small frames this many times (default 2: a lost copy costs nothing)")  # fmt: skip
    p.add_argument("--frame-parity", default=None, choices=("on", "off"),
                   help="webrtc: send a frame larger than a packet as pieces plus their XOR, so any one lost "
                        "piece costs nothing (default on)")  # fmt: skip
    p.add_argument("--connect-timeout", type=float, default=15.0, help="seconds to wait for the server")
    p.add_argument("--start-at", type=float, default=0.0,
                   help="Unix time of the first capture (aligns runs with an emulated link's clock)")  # fmt: skip
    return p


def check_args(args: argparse.Namespace) -> str:
    """What is wrong with the flags, before anything starts ("" when nothing is)."""
    if args.transport not in TRANSPORTS:
        return f"--transport {args.transport}: unknown transport; one of {', '.join(TRANSPORTS)}"
    if args.frame_retransmits is not None and (args.transport != "webrtc" or args.frame_retransmits < 0):
        return "--frame-retransmits: a number >= 0, with --transport webrtc only"
    for flag, value in (("--frame-copies", args.frame_copies), ("--frame-parity", args.frame_parity)):
        if value is not None and args.transport != "webrtc":
            return f"{flag}: with --transport webrtc only"
    if args.codec not in CODEC_IDS:
        return f"--codec {args.codec}: unknown codec; one of {', '.join(CODEC_IDS)}"
    for flag, value, low in (("--frames", args.frames, 1), ("--concurrency", args.concurrency, 1),
                             ("--width", args.width, -1), ("--deadline-ms", args.deadline_ms, 0)):  # fmt: skip
        if value < low:
            return f"{flag} {value}: must be >= {low}"
    for flag, value in (("--fps", args.fps), ("--slowdown", args.slowdown), ("--start-at", args.start_at)):
        if not np.isfinite(value) or value < 0:
            return f"{flag} {value}: must be a number >= 0"
    if not 0 <= args.quality <= 100:
        return f"--quality {args.quality}: must be within 0..100"
    if not args.connect_timeout > 0:
        return f"--connect-timeout {args.connect_timeout}: must be > 0"
    return ""


def check_bundle(args: argparse.Namespace, bundle) -> str:  # type: ignore[no-untyped-def]
    """What the flags ask of this model that it cannot do ("" when nothing)."""
    if args.codec not in bundle.codecs:
        return f"--codec {args.codec}: {bundle.name} serves {', '.join(bundle.codecs)}"
    if codec_kind(args.codec).has_widths and args.width >= bundle.width_count:
        return f"--width {args.width}: {bundle.name} has widths 0..{bundle.width_count - 1} (-1: the widest)"
    return ""


def summarize(predictions: list, labels: np.ndarray, deadline_ms: float = 0.0) -> dict:
    ok = [p for p in predictions if p.ok]
    known = [(p, labels[i]) for i, p in enumerate(predictions) if p.ok and labels[i] >= 0]
    statuses: dict[str, int] = {}
    for p in predictions:
        statuses[p.status] = statuses.get(p.status, 0) + 1
    latencies = [p.latency_ms for p in ok]
    missed = sum(1 for p in predictions if not p.ok or (deadline_ms and p.latency_ms > deadline_ms))
    return {
        "frames": len(predictions),
        "ok": len(ok),
        "statuses": statuses,
        "accuracy": (sum(int(p.index == y) for p, y in known) / len(known)) if known else None,
        "bytes_per_frame": float(np.mean([p.payload_bytes for p in predictions])) if predictions else 0.0,
        "latency_ms": latency_summary(latencies),
        "deadline_miss": missed / len(predictions) if predictions else 0.0,
        "device_ms": float(np.mean([p.device_ms for p in predictions])) if predictions else 0.0,
        "local_frames": sum(1 for p in predictions if p.local),
        "predictions": [p.index if p.ok else None for p in predictions],
    }


def record(i: int, t: float, p) -> dict:  # type: ignore[no-untyped-def]
    return {
        "i": i, "t": round(t, 4), "status": p.status, "latency_ms": round(p.latency_ms, 3),
        "bytes": p.payload_bytes, "codec": p.codec, "width": p.width, "local": p.local,
        "device_ms": round(p.device_ms, 3), "pred": p.index if p.ok else None,
        "bw_bps": p.bandwidth_bps, "rtt_ms": p.rtt_ms, "server_ms": p.server.get("total_ms"),
        "attempts": p.attempts, "error": p.error,
        "batch": p.server.get("batch_size"), "tail_ms": p.server.get("tail_ms"), "decode_ms": p.server.get("decode_ms"),
    }  # fmt: skip


def transport_options(args: argparse.Namespace) -> dict:
    """The transport's options the flags set (the transport's defaults for the rest)."""
    parity = None if args.frame_parity is None else args.frame_parity == "on"
    options = {"frame_retransmits": args.frame_retransmits, "copies": args.frame_copies, "parity": parity}
    return {k: v for k, v in options.items() if v is not None}


async def run(args: argparse.Namespace) -> int:
    from splitserve.data.samples import load_sample
    from splitserve.device_client.channel import ChannelSettings
    from splitserve.device_client.client import AsyncSplitClient, ClientError, ClientOptions

    settings = ChannelSettings(
        target=args.server, token=args.token, tls=args.tls, ca_cert=args.ca_cert,
        client_cert=args.client_cert, client_key=args.client_key, server_name=args.server_name,
    )  # fmt: skip
    options = ClientOptions(
        version=args.version, channel=settings, fetch=args.fetch, codec=args.codec, width=args.width,
        policy=args.policy, deadline_ms=args.deadline_ms, image_quality=args.quality, slowdown=args.slowdown,
        connect_timeout=args.connect_timeout, runtime=args.runtime, transport=args.transport,
        transport_options=transport_options(args),
    )  # fmt: skip
    client = AsyncSplitClient(args.server, args.model, options)
    try:
        await client.connect()
    except (ClientError, FileNotFoundError, ValueError) as exc:
        print(f"device-client: {exc}", file=sys.stderr)
        return 1
    try:
        bundle = client.bundle
        assert bundle is not None
        problem = check_bundle(args, bundle)
        if problem:
            print(f"device-client: {problem}", file=sys.stderr)
            return 2
        sample = args.sample or bundle.manifest.get("sample") or ""
        if not sample:
            print(f"device-client: {bundle.name} names no sample; pass --sample", file=sys.stderr)
            return 2
        try:
            images, labels = load_sample(sample)
            client.head.check_image(images[0])  # type: ignore[union-attr]
        except (FileNotFoundError, ValueError) as exc:
            print(f"device-client: --sample {sample}: {exc}", file=sys.stderr)
            return 2
        if args.start_at:
            lag = time.time() - args.start_at
            if lag > 0:
                print(f"device-client: ready {lag:.2f} s after --start-at; starting late", file=sys.stderr)
            await asyncio.sleep(max(0.0, -lag))
        n = args.frames
        idx = np.arange(n) % len(images)
        predictions: list = [None] * n
        starts = [0.0] * n
        t0 = time.perf_counter()

        async def one(i: int) -> None:
            starts[i] = time.perf_counter() - t0
            predictions[i] = await client.infer(images[idx[i]])

        if args.fps > 0:
            tasks = []
            for i in range(n):
                delay = t0 + i / args.fps - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
        else:
            sem = asyncio.Semaphore(max(1, args.concurrency))

            async def limited(i: int) -> None:
                async with sem:
                    await one(i)

            await asyncio.gather(*(limited(i) for i in range(n)))
        elapsed = time.perf_counter() - t0
    finally:
        await client.close()

    summary = summarize(predictions, labels[idx], args.deadline_ms)
    summary.update(model=f"{bundle.name}:{bundle.version}", codec=args.codec, policy=args.policy,
                   runtime=client.head.runtime.name,  # type: ignore[union-attr]
                   width=args.width, reconnects=client.reconnects, slowdown=args.slowdown,
                   transport=args.transport)  # fmt: skip
    summary["frames_per_s"] = n / elapsed if elapsed > 0 else 0.0
    acc = summary["accuracy"]
    p50, p95 = summary["latency_ms"]["p50"], summary["latency_ms"]["p95"]
    print(
        f"{summary['model']}  {args.policy or args.codec}  frames {n}  ok {summary['ok']}  "
        f"accuracy {'-' if acc is None else format(acc, '.4f')}  bytes/frame {summary['bytes_per_frame']:.1f}  "
        f"latency p50 {'-' if p50 is None else format(p50, '.2f')} ms  "
        f"p95 {'-' if p95 is None else format(p95, '.2f')} ms"
        f"  ({summary['frames_per_s']:.0f} frames/s)"
    )
    if len(summary["statuses"]) > 1 or "OK" not in summary["statuses"]:
        print(f"statuses: {summary['statuses']}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if args.records:
        with args.records.open("w") as f:
            for i, p in enumerate(predictions):
                f.write(json.dumps(record(i, starts[i], p)) + "\n")
    return 0 if summary["ok"] == n else 1


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"device-client: {problem}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
