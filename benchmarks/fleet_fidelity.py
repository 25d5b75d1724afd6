"""The fleet model against a real run: N devices, one edge-server killed mid-run, the same traces.

    python benchmarks/fleet_fidelity.py --model lite0-imagenet --devices 4 --seconds 60 --kill-at 30

Real: an edge-server process; N device-client processes (adaptive policy, --fps, --deadline-ms),
each through its own userspace link emulator replaying a Mahimahi uplink trace from its own
offset; at --kill-at the server is SIGKILLed and started again on the same port (as a pod
restarts). Every frame's outcome is recorded.

Model: the same devices (trace, offset, frame phase), deadline, policy and failure in the
fleet model's per-device mode (no aggregation), with what the real run measured for the parts the
model does not simulate: each device's head time (the median over its offloaded frames; on this
2-core machine the heads share the CPU with the server), the server's batch time per batch size
(its Result timings) and how long the restarted server took to serve. A second model run uses
the defaults instead (the manifest's head times, measured on an idle machine, and the throughput
benchmark's service curve), to show what those inputs are worth.

Compared: misses (frames without an OK result within the deadline) and the p95 latency of the
frames answered in time: over the whole run; from 2 s on (a real device's first frames include its
head's warm-up, which the model has not); from 2 s to the kill; after the kill. The target: within
20 % of each other, or within 1 point of misses. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from splitserve.edge_server.healthcheck import check
from splitserve.simulator.experiment import free_port
from splitserve.simulator.fleet.cli import model_costs
from splitserve.simulator.fleet.engine import simulate_fleet
from splitserve.simulator.fleet.scenario import DeviceCosts, Failure, FleetScenario, load_traces
from splitserve.simulator.fleet.service import ServiceCurve, load_service_curve, results_path
from splitserve.simulator.link import LinkConfig
from splitserve.simulator.proxy import LinkProxy
from splitserve.simulator.units import parse_time_ms

BIN = Path(sys.executable).parent
# A real device's first frames include its head's first runs (allocation, warm-up), which the model
# does not have: the windows but "all" start after them.
WARM_S = 2.0
ROOT = Path(__file__).resolve().parents[1]


class _Proxies:
    """Every device's link emulator on one event-loop thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxies: list[LinkProxy] = []

    def add(self, proxy: LinkProxy) -> int:
        self.proxies.append(proxy)
        return asyncio.run_coroutine_threadsafe(proxy.start(), self.loop).result(10)

    def close(self) -> None:
        for p in self.proxies:
            asyncio.run_coroutine_threadsafe(p.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _start_server(port: int, log: Path) -> subprocess.Popen:
    with log.open("a") as out:
        return subprocess.Popen([str(BIN / "edge-server"), "--host", "127.0.0.1", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def _wait_serving(port: int, proc: subprocess.Popen, timeout: float = 180.0) -> float:
    t_end = time.time() + timeout
    while time.time() < t_end:
        if proc.poll() is not None:
            raise RuntimeError(f"edge-server exited ({proc.returncode})")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            healthy = check(port, timeout=1.0)
        if healthy:
            return time.time()
        time.sleep(0.1)
    raise TimeoutError("edge-server did not serve in time")


def real_run(args, traces, placements, workdir: Path) -> dict:  # type: ignore[no-untyped-def]
    port = free_port()
    log = workdir / "edge-server.log"
    server = _start_server(port, log)
    _wait_serving(port, server)
    proxies = _Proxies()
    start_at = time.time() + args.warmup  # the device processes load the model meanwhile
    mono_now = time.monotonic()
    down = LinkConfig(delay_ms=args.delay_ms)
    clients = []
    for i, (ti, offset, phase) in enumerate(placements):
        # the link runs from now (the device connects during the warm-up), at its offset by frame 0
        up = LinkConfig(trace=traces[ti].rotated(offset - args.warmup), delay_ms=args.delay_ms)
        pport = proxies.add(LinkProxy("127.0.0.1", port, up, down, seed=i, start=mono_now))
        rec = workdir / f"device{i}.jsonl"
        cmd = [str(BIN / "device-client"), "--server", f"127.0.0.1:{pport}", "--model", args.model,
               "--policy", "adaptive", "--fps", str(args.fps), "--frames", str(int(args.seconds * args.fps)),
               "--deadline-ms", str(int(args.deadline_ms)), "--records", str(rec),
               "--start-at", f"{start_at + phase:.3f}", "--connect-timeout", "600"]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        clients.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(workdir / f"device{i}.log", "w"),
                                         env=env), rec))  # fmt: skip
    kill_wall = start_at + args.kill_at
    time.sleep(max(0.0, kill_wall - time.time()))
    server.send_signal(signal.SIGKILL)
    server.wait()
    killed = time.time()
    server = _start_server(port, log)
    serving = _wait_serving(port, server)
    for proc, _ in clients:
        proc.wait(args.seconds * 4 + 300)
    server.send_signal(signal.SIGTERM)
    server.wait(60)
    proxies.close()
    frames = []
    for i, (_, rec) in enumerate(clients):
        if not rec.is_file():
            raise RuntimeError(f"device {i} wrote no records: {(workdir / f'device{i}.log').read_text()[-2000:]}")
        for line in rec.read_text().splitlines():
            r = json.loads(line)
            r["device"] = i
            frames.append(r)
    late = [i for i in range(len(clients)) if "starting late" in (workdir / f"device{i}.log").read_text()]
    run = {"kill_at_s": killed - start_at, "down_s": serving - killed, "late_devices": late,
           "placements": placements, "seconds": args.seconds, "fps": args.fps, "deadline_ms": args.deadline_ms,
           "delay_ms": args.delay_ms}  # fmt: skip
    (workdir / "run.json").write_text(json.dumps(run) + "\n")
    return {"frames": frames, **run}


def replayed_run(workdir: Path) -> dict:
    """A kept real run (--keep): its records and what run.json says about it."""
    run = json.loads((workdir / "run.json").read_text())
    frames = []
    for i in range(len(run["placements"])):
        for line in (workdir / f"device{i}.jsonl").read_text().splitlines():
            frames.append({**json.loads(line), "device": i})
    return {"frames": frames, **run}


def _summary(capture_s: np.ndarray, ok_in_time: np.ndarray, latency: np.ndarray, kill_at: float) -> dict:
    out = {}
    for name, sel in (("all", np.ones_like(ok_in_time, bool)), ("warm", capture_s >= WARM_S),
                      ("before_kill", (capture_s >= WARM_S) & (capture_s < kill_at)),
                      ("after_kill", capture_s >= kill_at)):  # fmt: skip
        n = int(sel.sum())
        good = latency[sel & ok_in_time]
        out[name] = {"frames": n, "miss": float(1 - ok_in_time[sel].mean()) if n else None,
                     "p95_in_time_ms": float(np.percentile(good, 95)) if len(good) else None}  # fmt: skip
    return out


def real_summary(run: dict, deadline_ms: float) -> dict:
    fr = run["frames"]
    t = np.array([r["t"] for r in fr])
    ok = np.array([r["status"] == "OK" and r["latency_ms"] <= deadline_ms for r in fr])
    lat = np.array([r["latency_ms"] for r in fr])
    return _summary(t, ok, lat, run["kill_at_s"])


def model_summary(result, kill_at: float) -> dict:  # type: ignore[no-untyped-def]
    """The model's frames by capture time: its timeline buckets are 1 s, so the split is at a second."""
    tl = result.timeline
    t = np.arange(tl.n) * tl.bucket_s
    out = {}
    for name, sel in (("all", np.ones(tl.n, bool)), ("warm", t >= WARM_S),
                      ("before_kill", (t >= WARM_S) & (t < kill_at)), ("after_kill", t >= kill_at)):  # fmt: skip
        frames = tl.frames[sel].sum()
        windows = np.arange(tl.windows) * 10.0
        wsel = {"all": np.ones(tl.windows, bool), "warm": np.ones(tl.windows, bool),
                "before_kill": windows + 10.0 <= kill_at, "after_kill": windows >= kill_at}[name]  # fmt: skip
        from splitserve.simulator.fleet.engine import LATENCY_BIN_MS, percentile_ms

        hist = tl.hist[wsel].sum(axis=0)[: int(result.scenario.deadline_ms / LATENCY_BIN_MS)]
        out[name] = {"frames": int(round(frames)), "miss": float(tl.misses[sel].sum() / frames) if frames else None,
                     "p95_in_time_ms": percentile_ms(hist, 0.95)}  # fmt: skip
    return out


def measured_curve(frames: list[dict]) -> ServiceCurve:
    """Batch time per batch size, from the server's own timings in each result."""
    by: dict[int, list[float]] = {}
    for r in frames:
        if r.get("batch") and r.get("tail_ms") is not None:
            by.setdefault(int(r["batch"]), []).append(float(r["tail_ms"]) + float(r.get("decode_ms") or 0.0))
    pts = [(b, float(np.median(v))) for b, v in sorted(by.items()) if len(v) >= 10]
    if not pts:
        raise RuntimeError("the real run returned no server timings")
    ms = np.maximum.accumulate([m for _, m in pts])  # a bigger batch never takes less time
    return ServiceCurve(np.array([b for b, _ in pts], float), np.array(ms, float), "measured in the real run")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lite0-imagenet")
    p.add_argument("--devices", type=int, default=4)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--kill-at", type=float, default=30.0, help="seconds into the run the server is killed")
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--deadline", default="150ms")
    p.add_argument("--delay", default="20ms", help="one-way delay of every link")
    p.add_argument("--traces", type=Path, nargs="+", default=[ROOT.parent / "shared" / "traces"],
                   help="Mahimahi uplink traces (files or folders; default ../shared/traces)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=float, default=40.0, help="seconds the devices get to load before frame 0")
    p.add_argument("--keep", type=Path, help="keep the real run's records and logs here")
    p.add_argument("--replay", type=Path, help="a kept real run (--keep): model it again without running it")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    args.deadline_ms = parse_time_ms(args.deadline)
    args.delay_ms = parse_time_ms(args.delay)
    traces = load_traces(args.traces)
    rng = np.random.default_rng(args.seed)
    placements = [(i % len(traces), float(rng.uniform(0, traces[i % len(traces)].period_ms / 1e3)),
                   i / (args.fps * args.devices)) for i in range(args.devices)]  # fmt: skip
    t0 = time.time()
    if args.replay:
        run = replayed_run(args.replay)
        placements = [tuple(p) for p in run["placements"]]
        args.devices = len(placements)
        for key in ("seconds", "fps", "deadline_ms", "delay_ms"):  # as the kept run had them
            setattr(args, key, run.get(key, getattr(args, key)))
    else:
        workdir = args.keep or Path(tempfile.mkdtemp(prefix="fleet-fidelity-"))
        workdir.mkdir(parents=True, exist_ok=True)
        run = real_run(args, traces, placements, workdir)
    real = real_summary(run, args.deadline_ms)
    if run["late_devices"]:
        print(f"warning: devices {run['late_devices']} started late (loading took longer than --warmup)")
    offloaded = [r for r in run["frames"] if not r["local"] and r["status"] == "OK"]
    local = [r["device_ms"] for r in run["frames"] if r["local"]]
    manifest, overheads = model_costs(args.model)
    default_costs = DeviceCosts.from_manifest(manifest, overheads, local=True)
    head_ms = float(np.median([r["device_ms"] for r in offloaded])) if offloaded else None
    local_ms = float(np.median(local)) if local else default_costs.local_ms
    try:
        curve = measured_curve(run["frames"])
    except RuntimeError:  # nothing was offloaded: the throughput benchmark's curve stands in
        curve = load_service_curve(results_path(args.model))
    measured_costs = DeviceCosts(DeviceCosts.from_manifest(manifest, overheads, head_ms=head_ms).widths, local_ms)

    def model(costs: DeviceCosts, service: ServiceCurve) -> tuple[dict, dict]:
        sc = FleetScenario(
            devices=args.devices, duration_s=args.seconds, traces=traces, costs=costs, service=service, servers=1,
            fps=args.fps, deadline_ms=args.deadline_ms, delay_ms=args.delay_ms, aggregate=False,
            placements=placements, failures=[Failure(run["kill_at_s"], 1, run["down_s"])], seed=args.seed,
        )  # fmt: skip
        res = simulate_fleet(sc)
        return model_summary(res, run["kill_at_s"]), res.summary()

    measured, measured_full = model(measured_costs, curve)
    default, _ = model(default_costs, load_service_curve(results_path(args.model)))

    def close(a: float | None, b: float | None, points: bool) -> bool | None:
        if a is None or b is None:
            return None
        return abs(a - b) <= 0.01 or abs(a - b) <= 0.2 * abs(a) if points else abs(a - b) <= 0.2 * abs(a)

    checks = {k: {"miss": close(real[k]["miss"], measured[k]["miss"], True),
                  "p95": close(real[k]["p95_in_time_ms"], measured[k]["p95_in_time_ms"], False)}
              for k in real}  # fmt: skip
    result = {
        "model": args.model, "devices": args.devices, "seconds": args.seconds, "fps": args.fps,
        "deadline_ms": args.deadline_ms, "delay_ms": args.delay_ms, "traces": [t.name for t in traces],
        "placements": [{"trace": traces[ti].name, "offset_s": round(o, 2), "phase_s": round(ph, 3)}
                       for ti, o, ph in placements],
        "kill_at_s": round(run["kill_at_s"], 2), "server_down_s": round(run["down_s"], 2),
        "late_devices": run["late_devices"],
        "measured_inputs": {"head_ms": head_ms, "local_ms": local_ms, "service": curve.describe()},
        "default_inputs": {"head_ms": [w.head_ms for w in default_costs.widths], "local_ms": default_costs.local_ms,
                           "service": load_service_curve(results_path(args.model)).describe()},
        "real_local_share": len(local) / max(len(run["frames"]), 1),
        "replayed_from": str(args.replay) if args.replay else None,
        "real": real, "model_measured_inputs": measured, "model_default_inputs": default,
        "model_detail": {k: measured_full[k] for k in ("local", "width_share", "lost", "expired_at_server", "events")},
        "within_target": checks, "wall_s": round(time.time() - t0, 1), "load_after": os.getloadavg(),
    }  # fmt: skip
    print(f"fleet fidelity: {args.model}, {args.devices} devices x {args.seconds:g} s at {args.fps:g} fps, "
          f"deadline {args.deadline_ms:g} ms, server killed at {run['kill_at_s']:.1f} s "
          f"(serving again {run['down_s']:.1f} s later); head {head_ms} ms, local {local_ms} ms measured")  # fmt: skip
    print(f"{'window':<12} {'real miss':>9} {'model miss':>10} {'default':>8} {'real p95':>9} {'model p95':>9} "
          f"{'default':>8}  within target")  # fmt: skip
    for k in real:
        f = lambda x, pct: "-" if x is None else (f"{100 * x:.1f}%" if pct else f"{x:.0f}")  # noqa: E731
        print(f"{k:<12} {f(real[k]['miss'], 1):>9} {f(measured[k]['miss'], 1):>10} {f(default[k]['miss'], 1):>8} "
              f"{f(real[k]['p95_in_time_ms'], 0):>9} {f(measured[k]['p95_in_time_ms'], 0):>9} "
              f"{f(default[k]['p95_in_time_ms'], 0):>8}  miss {checks[k]['miss']}, p95 {checks[k]['p95']}")  # fmt: skip
    out = args.json or ROOT / "benchmarks" / "results" / f"fleet_fidelity_{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
