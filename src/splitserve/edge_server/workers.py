"""``edge-server --workers N``: several server processes on one port, and their supervisor.

One Python process cannot feed a GPU: entropy decoding holds the interpreter lock
(benchmarks/codec_speed.py: two decoding threads are no faster than one), and so do
gRPC's message handling and result building. So the server scales the way gRPC
documents for Python servers: N worker processes, each a complete server (its own
grpc.aio server, model repository, batchers, decode pool and tail worker), all bound
to the same port with SO_REUSEPORT; the kernel spreads incoming connections over
them. A stream lives on one worker for its whole life, so deadlines, limits, the
exactly-one-result rule and drain hold per worker exactly as they do with one
process (``max_streams`` is per worker: the server takes N times as many).

The supervisor (the process the operator started) reserves the port, starts the
workers, serves the one metrics endpoint, forwards SIGTERM / SIGINT so every worker
drains, and exits once all have stopped. Metrics use Prometheus' multiprocess mode:
each worker writes its samples to files in a private directory and the supervisor's
/metrics sums them, so one scrape target sees the whole server under the usual names.
A worker that dies after it was serving is replaced; one that fails to start stops
the server, with the worker's own error on stderr.

Workers are forked on a CPU (they inherit the supervisor's imports: torch, gRPC and
compressai take seconds each) and spawned where they may use CUDA: a forked child
cannot use a CUDA driver its parent initialised, and importing the CUDA stack may do
that (on an H100 box every forked worker failed its first CUDA call with
"initialization error"). ``SPLITSERVE_WORKER_START`` overrides the choice.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.connection import Connection, wait
from typing import Any

from splitserve.edge_server.config import ServerConfig

log = logging.getLogger("splitserve.server")
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
START_METHOD_ENV = "SPLITSERVE_WORKER_START"


def default_workers(cpus: int | None = None) -> int:
    """One worker per 4 cores, 1 to 8.

    Each worker decodes on one core at a time and keeps a few threads busy around it
    (gRPC, the tail's host-side work); on a CPU-only box the tail wants the cores, so a
    small machine runs one worker with every core for the tail.
    """
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(8, cpus // 4))


def start_method(device: str) -> str:
    """How the workers are started for ``--device``: fork on a CPU, spawn where CUDA may be used."""
    methods = mp.get_all_start_methods()
    chosen = os.environ.get(START_METHOD_ENV, "")
    if chosen:
        if chosen not in methods:
            raise ValueError(f"{START_METHOD_ENV}={chosen!r}: not a start method here ({', '.join(methods)})")
        return chosen
    if "fork" not in methods:
        return "spawn"
    if device == "cpu":
        return "fork"
    if device == "auto":
        import torch

        # device_count asks NVML, which leaves the CUDA driver uninitialised (is_available may not)
        return "spawn" if torch.cuda.device_count() else "fork"
    return "spawn"


def _reserve(host: str, port: int) -> tuple[socket.socket, int]:
    """A bound, non-listening SO_REUSEPORT socket holding the port the workers will share.

    It never accepts connections (only listening sockets get them); it pins the port,
    and picks one for ``--port 0``, before any worker binds.
    """
    host = host.strip("[]") or "::"
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = info[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # as gRPC binds [::]: both families
    sock.bind(address)
    return sock, sock.getsockname()[1]


def _worker_main(cfg: ServerConfig, overrides: dict, index: int, threads: int, ready: Connection) -> None:
    """A worker process: one complete server on the shared port."""
    # Ctrl-C reaches the whole process group: the supervisor alone turns it into a drain (SIGTERM here)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the supervisor's handler came along with fork
    import asyncio

    import torch

    from splitserve.edge_server.server import serve
    from splitserve.logs import setup_logging

    setup_logging(cfg.log_level, cfg.log_format, background=True)  # a stalled log reader must not stall serving
    if threads:
        torch.set_num_threads(threads)

    try:
        asyncio.run(serve(cfg, overrides, serve_metrics=False, on_started=lambda port: ready.send(port)))
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"edge-server worker {index}: {exc}", flush=True, file=sys.stderr)
        raise SystemExit(1) from None


class Supervisor:
    """Starts, watches and stops the worker processes of one ``edge-server --workers N``."""

    def __init__(self, cfg: ServerConfig, overrides: dict[str, Any], workers: int) -> None:
        self.cfg = cfg
        self.overrides = overrides
        self.n = workers
        # A fork is safe on a CPU because the supervisor has created no gRPC object and run no torch op
        # (so no thread pools) before it forks.
        self._ctx = mp.get_context(start_method(cfg.device))
        self._procs: list[mp.process.BaseProcess | None] = [None] * workers
        self._stopping = False
        self._metrics_dir = ""
        threads_env = os.environ.get("OMP_NUM_THREADS")
        # the workers share the cores: each gets its slice for the tail unless the operator said otherwise
        self.threads = 0 if threads_env else max(1, (os.cpu_count() or 1) // workers)

    def _start(self, index: int, cfg: ServerConfig) -> tuple[mp.process.BaseProcess, Connection]:
        receive, send = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=_worker_main, args=(cfg, self.overrides, index, self.threads, send), name=f"edge-worker-{index}"
        )
        proc.start()
        send.close()
        self._procs[index] = proc
        return proc, receive

    def _await_ready(self, started: dict[int, tuple[mp.process.BaseProcess, Connection]]) -> bool:
        """Wait until each started worker is SERVING; False when one exited first."""
        waiting = dict(started)
        while waiting and not self._stopping:
            ready = wait([c for _, c in waiting.values()] + [p.sentinel for p, _ in waiting.values()], timeout=0.5)
            for index, (proc, conn) in list(waiting.items()):
                if conn in ready:
                    try:
                        conn.recv()
                    except EOFError:
                        pass  # closed without a word: the process exited, seen below
                    else:
                        log.info("worker %d (pid %d) serving", index, proc.pid)
                        del waiting[index]
                        conn.close()
                        continue
                if not proc.is_alive():
                    log.error("worker %d (pid %d) exited with code %s while starting", index, proc.pid, proc.exitcode)
                    return False
        return not waiting

    def run(self) -> int:
        cfg = self.cfg
        log.info("starting %d workers (%s)", self.n, self._ctx.get_start_method())
        try:
            holder, port = _reserve(cfg.host, cfg.port)
        except OSError as exc:
            raise RuntimeError(f"cannot listen on {cfg.host}:{cfg.port} ({exc.strerror or exc})") from None
        worker_cfg = ServerConfig(**{**vars(cfg), "port": port})
        if cfg.metrics_port:
            self._metrics_dir = tempfile.mkdtemp(prefix="splitserve-metrics-")
            # prometheus_client picks its value store when it is first imported: set before the import below
            os.environ[_MULTIPROC_ENV] = self._metrics_dir
        from splitserve.edge_server.server import process_age_s  # imported once here, inherited by forked workers

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        t0 = time.perf_counter()
        try:
            started = {i: self._start(i, worker_cfg) for i in range(self.n)}
            if not self._await_ready(started):
                return 1 if not self._stopping else self._stop()
            if cfg.metrics_port:
                self._serve_metrics()
            age = process_age_s()
            log.info(
                "edge-server listening on %s:%d with %d workers, %s torch threads each (SERVING %s s after the "
                "process started; %.1f s for the workers to load their models)",
                cfg.host, port, self.n, self.threads or "OMP_NUM_THREADS", "?" if age is None else f"{age:.1f}",
                time.perf_counter() - t0,
            )  # fmt: skip
            while not self._stopping:
                self._watch(worker_cfg)
            return self._stop()
        finally:
            for proc in self._procs:  # whatever happened, no worker outlives its supervisor
                if proc is not None and proc.is_alive():
                    proc.kill()
                    proc.join(5)
            holder.close()
            if self._metrics_dir:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _watch(self, cfg: ServerConfig) -> None:
        """Replace a worker that died while serving."""
        live = [p for p in self._procs if p is not None]
        wait([p.sentinel for p in live], timeout=0.5)
        if self._stopping:
            return
        for index, proc in enumerate(self._procs):
            if proc is None or proc.is_alive():
                continue
            log.error("worker %d (pid %d) exited with code %s; starting a replacement", index, proc.pid, proc.exitcode)
            self._forget(proc)
            started = {index: self._start(index, cfg)}
            if not self._await_ready(started) and not self._stopping:
                log.error("the replacement for worker %d did not start; stopping", index)
                self._stopping = True

    def _forget(self, proc: mp.process.BaseProcess) -> None:
        """Drop a dead worker's live gauges (in-flight frames, open streams) from the summed metrics."""
        if self._metrics_dir and proc.pid is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(proc.pid, self._metrics_dir)

    def _stop(self) -> int:
        """Every worker drains (SIGTERM) and exits; 0 when all of them stopped cleanly."""
        log.info("stopping %d workers: each drains its streams (up to %.0f s)", self.n, self.cfg.drain_timeout)
        for proc in self._procs:
            if proc is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        code = 0
        deadline = time.monotonic() + self.cfg.drain_timeout + 10
        for index, proc in enumerate(self._procs):
            if proc is None:
                continue
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("worker %d (pid %d) did not stop in time; killing it", index, proc.pid)
                proc.kill()
                proc.join(5)
            if proc.exitcode != 0:
                code = 1
        log.info("edge-server stopped")
        return code

    def _serve_metrics(self) -> None:
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self._metrics_dir)
        try:
            start_http_server(self.cfg.metrics_port, addr=self.cfg.metrics_host, registry=registry)
        except OSError as exc:  # the workers are stopped by run()'s cleanup
            raise RuntimeError(
                f"cannot serve metrics on {self.cfg.metrics_host}:{self.cfg.metrics_port} ({exc.strerror or exc})"
            ) from None
        log.info("metrics of all workers on http://%s:%d/metrics", self.cfg.metrics_host, self.cfg.metrics_port)


def supervise(cfg: ServerConfig, overrides: dict[str, Any], workers: int) -> int:
    return Supervisor(cfg, overrides, workers).run()
