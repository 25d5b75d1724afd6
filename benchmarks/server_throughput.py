"""Edge-server throughput: the raw tail vs the server with batching off vs on.

    python benchmarks/server_throughput.py --model fmnist-split --streams 1,4,16,32,64
    python benchmarks/server_throughput.py --model lite0-imagenet --streams 1,8,32 --duration 20
    python benchmarks/server_throughput.py --model lite0-imagenet --device cuda --workers 4 --streams 32,128

For each stream count, a real edge-server process serves real gRPC streams
driven by several load-generator processes, each stream on its own connection (as each
device has its own) keeping a window of
real encoded frames (the bundled model's widest width) in flight. Reported:

  (a) tail   the decoder + tail alone on --device, in a tight loop, at the batch
             size the batching server reached, from decoded host tensors: the
             host-to-device copy (pinned, on CUDA) and a sync are included: the limit
  (b) off    the server with --max-batch 1
  (c) on     the server with dynamic batching (--max-batch, default 64; --max-delay-ms 2)
  (d) on xN  (c) with --workers N processes sharing the port, when --workers > 1

frames/s, server p50 / p99 latency (from each Result's timings), mean batch,
and where the time goes per frame: decode, queue, tail, and the rest (gRPC,
routing, result building). Server CPU per frame comes from /proc. Prints a
table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- load generator (runs as a subprocess: --worker) -------------------------------
def write_payloads(model: str, path: Path) -> None:
    """Encode the sample frames once, for every load generator (which then needs neither torch nor the model)."""
    import base64

    from splitserve.models.zoo import load

    bundle = load(model)
    width = bundle.width_count - 1
    payloads = real_payloads(bundle, width)
    path.write_text(json.dumps({
        "model": bundle.name, "width": width, "shape": list(bundle.latent_shape(width)),
        "payloads": [base64.b64encode(p).decode() for p in payloads],
    }))  # fmt: skip


async def _worker(server: str, frames: Path, streams: int, window: int, duration: float, out: Path) -> None:
    import base64

    import grpc

    from splitserve.proto import edge_inference_pb2 as pb
    from splitserve.proto import edge_inference_pb2_grpc as pb_grpc

    spec = json.loads(frames.read_text())
    model, width, shape = spec["model"], spec["width"], spec["shape"]
    payloads = [base64.b64decode(p) for p in spec["payloads"]]
    records: list[tuple[float, float, float, float, int]] = []
    stop = time.monotonic() + duration

    async def one_stream(s: int) -> None:
        # one connection per stream, as each device has its own: with --workers the kernel spreads
        # connections (not streams) over the processes (a local subchannel pool: grpc would share one)
        async with grpc.aio.insecure_channel(server, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            connected[0] += 1
            await ready.wait()
            await stream(pb_grpc.EdgeInferenceStub(channel), s)

    async def stream(stub, s: int) -> None:  # type: ignore[no-untyped-def]
        call = stub.Stream()
        sent = 0

        async def send() -> None:
            nonlocal sent
            frame = pb.Frame(frame_id=sent, model=model, codec="entropic", width=width,
                             payload=payloads[(s + sent) % len(payloads)], shape=shape)  # fmt: skip
            sent += 1
            await call.write(frame)

        for _ in range(window):
            await send()
        received = 0
        async for r in call:
            received += 1
            t = r.timings
            records.append((t.total_ms, t.decode_ms, t.queue_ms, t.tail_ms, t.batch_size))
            if time.monotonic() < stop:
                await send()
            elif received == sent:  # results may come back out of order: wait for all of them
                break
        await call.done_writing()

    ready = asyncio.Event()  # every stream connected before the clock starts

    async def start() -> None:
        nonlocal stop
        while connected[0] < streams:
            await asyncio.sleep(0.01)
        stop = time.monotonic() + duration
        ready.set()

    connected = [0]
    tasks = [asyncio.create_task(one_stream(s)) for s in range(streams)]
    await asyncio.gather(start(), *tasks)
    out.write_text(json.dumps(records))


# -- the benchmark ----------------------------------------------------------------
def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "cpu")  # fmt: skip
    return f"{model}, {os.cpu_count()} cores"


def real_payloads(bundle, width: int, n: int = 32) -> list[bytes]:  # type: ignore[no-untyped-def]
    """Entropic payloads of the sample images at ``width``: what devices send."""
    import torch

    from splitserve.data.samples import load_sample

    images, _ = load_sample(bundle.manifest.get("sample") or "")
    enc = bundle.encoder_for("entropic", width)
    with torch.inference_mode():
        head = bundle.device_stage("entropic", width)
        return [enc.encode(head(bundle.preprocess()(torch.from_numpy(img[None])))[0]) for img in images[:n]]


def tail_loop(model: str, batch: int, device: str, seconds: float = 3.0) -> dict:
    """(a): decoder + tail alone on ``device``, in a tight loop at this batch size, in this process.

    Each iteration decodes the batch's payloads into one host array (as the server's batcher
    does), copies it to the device (pinned memory on CUDA) and waits for the result, as the
    server's tail worker does.

    On CUDA the limit is the loop's frames/s. On a CPU the loop runs on one thread and
    the limit is every core doing what it did: cores / CPU seconds per frame. That holds
    on a shared machine, where wall-clock frames/s measure the neighbours (and several
    intra-op threads spin-wait for each other when a neighbour holds a core).
    """
    import torch

    from splitserve.models.zoo import load

    bundle = load(model)
    width = bundle.width_count - 1
    dev = torch.device(device)
    stage = bundle.server_stage("entropic", width).to(dev)
    decoder = bundle.decoder_for("entropic", width)
    payloads = real_payloads(bundle, width)
    payloads = [payloads[i % len(payloads)] for i in range(batch)]
    host = torch.empty((batch, *decoder.shape))
    if dev.type == "cuda":
        host = host.pin_memory()
    else:
        torch.set_num_threads(1)

    def step() -> None:
        decoder.decode_batch(payloads, host.numpy())
        stage(host.to(dev, non_blocking=True)).float().softmax(1).topk(5, dim=1)[0].cpu()

    with torch.inference_mode():
        step()
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            step()
            n += batch
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    cpu_limit = (os.cpu_count() or 1) * n / cpu
    return {
        "frames_per_s": cpu_limit if dev.type == "cpu" else n / wall,
        "loop_frames_per_s": n / wall,
        "cpu_ms_per_frame": cpu / n * 1e3,
        "threads": torch.get_num_threads(),
        "batch": batch,
    }


def _tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children (the workers of --workers N)."""
    total = _cpu_seconds(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                total += _cpu_seconds(int(stat.parent.name))
        except (OSError, ValueError):
            continue  # exited while we looked
    return total


def serve_and_load(
    frames: Path, streams: int, batching: bool, duration: float, window: int, procs: int, device: str,
    server_workers: int = 1, max_batch: int = 64,
) -> dict:  # fmt: skip
    port = _free_port()
    args = ["--max-batch", str(max_batch), "--max-delay-ms", "2"] if batching else ["--max-batch", "1"]
    t_start = time.perf_counter()
    server = subprocess.Popen(
        [str(BIN / "edge-server"), "--host", "127.0.0.1", "--port", str(port), "--max-inflight-per-stream", "256",
         "--max-queue", "4096", "--log-level", "warning", "--device", device, "--workers", str(server_workers), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        _wait_health(port, server)
        serving_s = time.perf_counter() - t_start
        if server_workers > 1:
            time.sleep(1.0)  # the first worker answered health; give the others their moment
        per_proc = [streams // procs + (1 if i < streams % procs else 0) for i in range(procs)]
        per_proc = [n for n in per_proc if n]
        outs = [Path(f"/tmp/ss-load-{port}-{i}.json") for i in range(len(per_proc))]
        cpu0 = _tree_cpu_seconds(server.pid)
        t0 = time.perf_counter()
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    "--server",
                    f"127.0.0.1:{port}",
                    "--frames",
                    str(frames),
                    "--streams",
                    str(n),
                    "--window",
                    str(window),
                    "--duration",
                    str(duration),
                    "--out",
                    str(out),
                ]
            )  # fmt: skip
            for n, out in zip(per_proc, outs, strict=True)
        ]
        for w in workers:
            w.wait(duration + 300)
        wall = time.perf_counter() - t0
        cpu = _tree_cpu_seconds(server.pid) - cpu0
        records = np.array([r for out in outs for r in json.loads(out.read_text())])
        for out in outs:
            out.unlink(missing_ok=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    # frames/s over the load window: every load generator sends for exactly `duration` seconds
    frames = len(records)
    total, decode, queue, tail, batch = (records[:, i] for i in range(5))
    tail_per_frame = tail / np.maximum(batch, 1)
    return {
        "streams": streams,
        "frames": frames,
        "frames_per_s": frames / duration,
        "latency_ms": {"p50": float(np.percentile(total, 50)), "p99": float(np.percentile(total, 99))},
        "mean_batch": float(batch.mean()),
        "per_frame_ms": {
            "decode": float(decode.mean()),
            "queue": float(queue.mean()),
            "tail": float(tail_per_frame.mean()),
            "rest": float((total - decode - queue - tail).mean()),
        },  # fmt: skip
        "server_cpu_ms_per_frame": cpu / frames * 1e3 if frames else None,
        "workers": server_workers,
        "serving_after_s": serving_s,
        "wall_s": wall,
    }


def _wait_health(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"edge-server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                return
        except grpc.RpcError:
            time.sleep(0.3)
    raise TimeoutError("edge-server did not come up")


def _load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fmnist-split")
    p.add_argument("--streams", default="1,4,16,32,64")
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (CUDA if present)")
    p.add_argument("--workers", type=int, default=1, help="also run (d): the batching server with N processes")
    p.add_argument("--max-batch", type=int, default=64, help="the batching server's --max-batch")
    p.add_argument("--duration", type=float, default=8.0, help="seconds of load per point")
    p.add_argument("--window", type=int, default=2, help="frames in flight per stream")
    p.add_argument("--procs", type=int, default=2, help="load-generator processes")
    p.add_argument("--json", type=Path, help="default: benchmarks/results/server_throughput_<model>.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--server", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--frames", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        asyncio.run(_worker(args.server, args.frames, int(args.streams), args.window, args.duration, args.out))
        return 0
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    name = device_name(device)
    print(f"{args.model} on {device} ({name}); load: {_load()}", flush=True)
    t_run = time.perf_counter()
    frames = Path(f"/tmp/ss-frames-{os.getpid()}.json")
    write_payloads(args.model, frames)
    rows = []
    for n in [int(s) for s in args.streams.split(",")]:
        t_point = time.perf_counter()
        row: dict = {"streams": n, "load_before": _load()}
        row["off"] = serve_and_load(frames, n, False, args.duration, args.window, args.procs, device)
        row["on"] = serve_and_load(
            frames, n, True, args.duration, args.window, args.procs, device, max_batch=args.max_batch
        )
        if args.workers > 1:
            row["on_workers"] = serve_and_load(
                frames, n, True, args.duration, args.window, args.procs, device, args.workers, args.max_batch
            )
        batch = max(1, round(row["on"]["mean_batch"]))
        row["tail"] = tail_loop(args.model, batch, device)
        row["point_s"] = time.perf_counter() - t_point
        rows.append(row)
        extra = f" | on x{args.workers} {row['on_workers']['frames_per_s']:7.0f}/s" if args.workers > 1 else ""
        print(f"streams {n:>3}: tail {row['tail']['frames_per_s']:8.0f}/s (batch {batch}) | off "
              f"{row['off']['frames_per_s']:7.0f}/s | on {row['on']['frames_per_s']:7.0f}/s "
              f"(batch {row['on']['mean_batch']:.1f}){extra} [{row['point_s']:.0f} s]", flush=True)  # fmt: skip
    print()
    configs = [("on", "on")] + ([("on_workers", f"on x{args.workers}")] if args.workers > 1 else [])
    head = (f"{'streams':>7} {'config':>8} {'tail f/s':>9} {'off f/s':>8} {'f/s':>8} {'/tail':>6} {'/off':>6} "
            f"{'p50 ms':>7} {'p99 ms':>7} {'batch':>6} {'decode':>7} {'queue':>7} {'tail':>7} {'rest':>7} "
            f"{'cpu/frame':>9} {'overhead':>9} {'cpu eff':>7}")  # fmt: skip
    print(head + "\n" + "-" * len(head))
    for r in rows:
        off, lim = r["off"], r["tail"]
        for key, label in configs:
            on = r[key]
            pf = on["per_frame_ms"]
            overhead = on["server_cpu_ms_per_frame"] - lim["cpu_ms_per_frame"]
            on["overhead_cpu_ms_per_frame"] = overhead
            on["of_tail"] = on["frames_per_s"] / lim["frames_per_s"]
            on["of_off"] = on["frames_per_s"] / off["frames_per_s"]
            on["cpu_efficiency"] = lim["cpu_ms_per_frame"] / on["server_cpu_ms_per_frame"]
            print(f"{r['streams']:>7} {label:>8} {lim['frames_per_s']:>9.0f} {off['frames_per_s']:>8.0f} "
                  f"{on['frames_per_s']:>8.0f} {on['of_tail']:>6.2f} {on['of_off']:>6.2f} "
                  f"{on['latency_ms']['p50']:>7.2f} {on['latency_ms']['p99']:>7.2f} {on['mean_batch']:>6.1f} "
                  f"{pf['decode']:>7.3f} {pf['queue']:>7.3f} {pf['tail']:>7.3f} {pf['rest']:>7.3f} "
                  f"{on['server_cpu_ms_per_frame']:>9.3f} {overhead:>9.3f} {on['cpu_efficiency']:>7.2f}")  # fmt: skip
    frames.unlink(missing_ok=True)
    total_s = time.perf_counter() - t_run
    print(
        "\nper-frame ms columns are means over every result; cpu/frame is the server's CPU time per frame (all "
        "its processes); overhead = cpu/frame - the tail's own CPU per frame at that batch size; cpu eff = the "
        "tail's CPU per frame / the server's; on a CPU, tail f/s = cores / the tail's CPU s per frame (one thread); "
        f"the run took {total_s:.0f} s; load after: {_load()}"
    )
    args.json = args.json or Path(__file__).parent / "results" / f"server_throughput_{args.model}.json"
    args.json.parent.mkdir(parents=True, exist_ok=True)
    from splitserve.models.zoo import load

    out = {"model": args.model, "version": str(load(args.model).version), "device": device, "device_name": name,
           "workers": args.workers,
           "max_batch": args.max_batch,
           "duration_s": args.duration, "run_s": total_s, "rows": rows}  # fmt: skip
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
