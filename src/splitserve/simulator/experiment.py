"""An emulated experiment with real processes: one edge-server, one device-client per strategy.

    edge-server (subprocess) <- link emulator (proxy, or netns) <- device-client (subprocess)

Every strategy gets a fresh link with the same seed, and its frames start at the
same moment of the link's clock, so a bandwidth trace hits every strategy
alike. Per frame the client records latency (capture to result), bytes,
width, status and prediction; accuracy is against the sample's labels, or
top-1 agreement with the unsplit teacher where the sample has none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from splitserve.models.bundle import Bundle
from splitserve.models.zoo import one_model_repository
from splitserve.simulator.link import LinkConfig
from splitserve.simulator.proxy import LinkProxy
from splitserve.simulator.strategies import Strategy
from splitserve.simulator.traces import link_rate_bps
from splitserve.timing import latency_summary

log = logging.getLogger("splitserve.simulator")
BIN = Path(sys.executable).parent


@dataclass
class ExperimentConfig:
    model: str
    strategies: list[Strategy]
    uplink: LinkConfig
    downlink: LinkConfig
    frames: int = 300
    fps: float = 10.0
    deadline_ms: float = 150.0
    slowdown: float = 1.0
    netns: bool = False
    seed: int = 0
    warmup_s: float = 6.0
    server_args: list[str] = field(default_factory=list)


@dataclass
class StrategyRun:
    strategy: Strategy
    records: list[dict]
    summary: dict
    log: str = ""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (for servers and proxies started here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(proc: subprocess.Popen, log_path: Path, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"edge-server exited ({proc.returncode}):\n{log_path.read_text()[-2000:]}")
        if "listening on" in log_path.read_text():
            return
        time.sleep(0.2)
    raise TimeoutError(f"edge-server did not start within {timeout:.0f} s")


class _ProxyThread:
    """A LinkProxy on its own event loop thread (the experiment itself is synchronous)."""

    def __init__(self, proxy: LinkProxy) -> None:
        self.proxy = proxy
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="link-proxy", daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(proxy.start(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@contextlib.contextmanager
def edge_server(cfg: ExperimentConfig, workdir: Path, netns=None) -> Iterator[tuple[str, int]]:  # type: ignore[no-untyped-def]
    """A real edge-server (in ``netns``'s server namespace when given) until the block ends: (host, port)."""
    port = free_port()
    host = netns.server.address if netns is not None else "127.0.0.1"
    log_path = workdir / "edge-server.log"
    cmd = [str(BIN / "edge-server"), "--host", host, "--port", str(port), *cfg.server_args]
    if "--models" not in cfg.server_args:  # the model simulated, alone: the server need not load the others
        cmd += ["--models", str(one_model_repository(cfg.model, workdir / "models"))]
    if netns is not None:
        cmd = netns.server.exec_prefix() + cmd
    with log_path.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_listening(proc, log_path)
        yield host, port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _run_client(cfg: ExperimentConfig, strategy: Strategy, address: str, start_at: float, workdir: Path,
                exec_prefix: list[str], tick: Callable[[int], None] | None = None) -> StrategyRun:  # fmt: skip
    """One device-client run; ``tick`` hears, about twice a second, how many frames its clock has started."""
    safe = strategy.name.replace(":", "-")
    records_path = workdir / f"{safe}.jsonl"
    summary_path = workdir / f"{safe}.json"
    cmd = [
        *exec_prefix, str(BIN / "device-client"), "--server", address, "--model", cfg.model,
        "--frames", str(cfg.frames), "--fps", str(cfg.fps), "--deadline-ms", str(int(cfg.deadline_ms)),
        "--slowdown", str(cfg.slowdown), "--records", str(records_path), "--json", str(summary_path),
        "--start-at", f"{start_at:.3f}", *strategy.client_args(),
    ]  # fmt: skip
    timeout = cfg.frames / max(cfg.fps, 1) * 20 + 300
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        try:
            while True:
                try:
                    proc.wait(0.5)
                    break
                except subprocess.TimeoutExpired:
                    if time.time() > start_at + timeout:
                        raise
                    if tick is not None and cfg.fps > 0:
                        tick(int(min(cfg.frames, max(0.0, (time.time() - start_at) * cfg.fps))))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if not records_path.is_file():
        raise RuntimeError(f"device-client for {strategy.name} failed ({proc.returncode}):\n{stderr[-3000:]}")
    records = [json.loads(line) for line in records_path.read_text().splitlines()]
    return StrategyRun(strategy, records, json.loads(summary_path.read_text()), stdout + stderr)


def reference_predictions(bundle: Bundle, images: np.ndarray) -> np.ndarray:
    from splitserve.training.evaluate import predict_local

    return predict_local(bundle, images)


def score(run: StrategyRun, labels: np.ndarray, teacher: np.ndarray, deadline_ms: float) -> dict:
    """The summary row of one strategy from its per-frame records."""
    recs = run.records
    n = len(recs)
    idx = np.array([r["i"] for r in recs]) % len(labels)
    ok = np.array([r["status"] == "OK" for r in recs])
    preds = np.array([r["pred"] if r["pred"] is not None else -1 for r in recs])
    lat = np.array([r["latency_ms"] for r in recs])
    ok_lat = lat[ok]
    has_labels = bool(np.all(labels >= 0))
    truth = labels[idx] if has_labels else teacher[idx]
    missed = (~ok) | (lat > deadline_ms) if deadline_ms else ~ok
    return {
        "name": run.strategy.name,
        "transport": run.strategy.transport,
        "bytes_per_frame": float(np.mean([r["bytes"] for r in recs])),
        "latency_ms": latency_summary(ok_lat),
        "deadline_miss": float(np.mean(missed)),
        "accuracy": float(np.mean((preds == truth)[ok])) if ok.any() else None,
        "accuracy_kind": "labels" if has_labels else "teacher agreement",
        "device_ms": float(np.mean([r["device_ms"] for r in recs])),
        "frames": n,
        "ok": int(ok.sum()),
        "local_frames": int(sum(1 for r in recs if r["local"])),
        "widths": {
            str(w): int(c)
            for w, c in zip(*np.unique([r["width"] for r in recs if not r["local"]], return_counts=True), strict=True)
        },  # fmt: skip
    }


def run_experiment(cfg: ExperimentConfig, on_progress: Callable[[str, int], None] | None = None,
                   keep_dir: Path | None = None,
                   on_strategy: Callable[[int, dict, float], None] | None = None) -> dict:  # fmt: skip
    """Run every strategy through the emulated link; returns the JSON-able report.

    ``on_progress(strategy name, frames started so far over all strategies)`` is called while it runs,
    and ``on_strategy(index, its report row, seconds it took)`` after each strategy.
    """
    from splitserve.data.samples import load_sample
    from splitserve.models.zoo import load

    if not cfg.netns and any(s.transport == "webrtc" for s in cfg.strategies):
        # the userspace proxy relays TCP only, and ICE would find a direct UDP path around it
        raise ValueError("the webrtc transport needs --netns (the userspace link proxy carries TCP only)")
    bundle = load(cfg.model)
    images, labels = load_sample(bundle.manifest.get("sample") or "")
    teacher = reference_predictions(bundle, images)
    workdir = Path(keep_dir or tempfile.mkdtemp(prefix="simulate-"))
    workdir.mkdir(parents=True, exist_ok=True)
    netns = None
    if cfg.netns:
        from splitserve.simulator.netns import NetnsLink

        netns = NetnsLink(cfg.uplink, cfg.downlink, cfg.seed)
    rows, runs = [], []
    try:
        with edge_server(cfg, workdir, None) if netns is None else _netns_server(cfg, workdir, netns) as (host, port):
            for n, strategy in enumerate(cfg.strategies):

                def tick(frames: int, name: str = strategy.name, before: int = n * cfg.frames) -> None:
                    if on_progress:
                        on_progress(name, before + frames)

                tick(0)
                strategy_t0 = time.monotonic()
                start_at = time.time() + cfg.warmup_s
                if netns is not None:
                    netns.restart_links(start_at)
                    run = _run_client(
                        cfg, strategy, f"{host}:{port}", start_at, workdir, netns.device.exec_prefix(), tick
                    )
                else:
                    start = time.monotonic() + (start_at - time.time())
                    proxy = LinkProxy("127.0.0.1", port, cfg.uplink, cfg.downlink, seed=cfg.seed, start=start)
                    thread = _ProxyThread(proxy)
                    try:
                        run = _run_client(cfg, strategy, f"127.0.0.1:{thread.port}", start_at, workdir, [], tick)
                    finally:
                        thread.close()
                runs.append(run)
                rows.append(score(run, labels, teacher, cfg.deadline_ms))
                if on_strategy:
                    on_strategy(n, rows[-1], time.monotonic() - strategy_t0)
    finally:
        if netns is not None:
            netns.close()
        if keep_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return {
        "model": f"{bundle.name}:{bundle.version}",
        "mode": "netns" if cfg.netns else "proxy",
        "link": {"uplink": cfg.uplink.describe(), "downlink": cfg.downlink.describe()},
        "frames": cfg.frames,
        "fps": cfg.fps,
        "deadline_ms": cfg.deadline_ms,
        "device_slowdown": cfg.slowdown,
        "strategies": rows,
        "timeline": {
            run.strategy.name: [
                {
                    "t": r["t"],
                    "latency_ms": r["latency_ms"],
                    "width": r["width"],
                    "local": r["local"],
                    "bw_bps": r["bw_bps"],
                    "link_bps": _link_bps(cfg.uplink, r["t"] + _late_s(run.log)),
                    "status": r["status"],
                    "server_ms": r["server_ms"],
                    "bytes": r["bytes"],
                }
                for r in run.records
            ]
            for run in runs
        },  # fmt: skip
    }


def _late_s(client_log: str) -> float:
    """How late the device-client started after --start-at (it says so), when the link's clock began."""
    found = re.search(r"ready (\d+(?:\.\d+)?) s after --start-at", client_log)
    return float(found.group(1)) if found else 0.0


def _link_bps(link: LinkConfig, t: float) -> float | None:
    """The uplink's capacity when a frame started (its clock starts with the run's first frame)."""
    rate = float(link_rate_bps(link.trace, link.rate_bps, np.array([t]))[0])
    return None if np.isnan(rate) else rate


@contextlib.contextmanager
def _netns_server(cfg: ExperimentConfig, workdir: Path, netns) -> Iterator[tuple[str, int]]:  # type: ignore[no-untyped-def]
    netns.start()
    with edge_server(cfg, workdir, netns) as (host, port):
        yield host, port
