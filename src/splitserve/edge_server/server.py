"""The edge server process: gRPC (with health and reflection), the model repository, graceful drain."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from splitserve.devices import resolve_device
from splitserve.edge_server.auth import TokenAuthInterceptor, load_tokens
from splitserve.edge_server.config import MAX_CONNECTION_AGE_GRACE_S, ServerConfig
from splitserve.edge_server.inference import InferencePipeline
from splitserve.edge_server.metrics import ServerMetrics
from splitserve.edge_server.repository import ModelRepository
from splitserve.edge_server.service import EdgeInferenceService
from splitserve.edge_server.tail import DeviceWorker
from splitserve.proto import edge_inference_pb2 as pb
from splitserve.proto import edge_inference_pb2_grpc as pb_grpc

log = logging.getLogger("splitserve.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EdgeInference"].full_name


def channel_options(cfg: ServerConfig) -> list[tuple[str, int]]:
    age = []
    if cfg.max_connection_age > 0:  # gRPC adds +-10 % jitter
        age = [("grpc.max_connection_age_ms", int(cfg.max_connection_age * 1e3)),
               ("grpc.max_connection_age_grace_ms", int(MAX_CONNECTION_AGE_GRACE_S * 1e3))]  # fmt: skip
    return age + [
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        # Mobile devices sleep and roam: let them keep idle streams alive with pings.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 0),
        # --workers: every worker process binds the same port; the kernel spreads connections over them.
        ("grpc.so_reuseport", 1),
    ]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as --host / --metrics-host take it) is reachable from this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def exposure_warnings(cfg: ServerConfig) -> list[str]:
    """What the settings expose beyond this machine, said plainly (the defaults are easy, not hardened)."""
    out = []
    tls = bool(cfg.tls_cert)
    if not is_loopback(cfg.host) and not tls:
        out.append(
            f"listening on {cfg.host} (beyond loopback) without TLS: frames and results cross the network in "
            "plaintext; add --tls-cert/--tls-key (and --tls-client-ca), or --host 127.0.0.1"
        )
    if cfg.tokens and not tls:
        out.append("bearer tokens are sent in plaintext without TLS: anyone on the path can copy one; add --tls-cert")
    if not cfg.tokens and not cfg.tls_client_ca and not is_loopback(cfg.host):
        out.append("no --tokens and no --tls-client-ca: any client that reaches this port may use it")
    if cfg.metrics_port and not is_loopback(cfg.metrics_host):
        out.append(f"metrics on {cfg.metrics_host}:{cfg.metrics_port} (beyond loopback, no auth); "
                   "--metrics-host 127.0.0.1 keeps them local")  # fmt: skip
    return out


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere): start-up time as an operator sees it."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def _webrtc_peers(service: EdgeInferenceService, cfg: ServerConfig):  # type: ignore[no-untyped-def]
    """WebRTC peers beside gRPC streams, when aiortc is installed (Signal answers UNIMPLEMENTED without it)."""
    try:
        from splitserve.edge_server.webrtc import WebRTCPeers
    except ImportError as exc:
        log.info("WebRTC off: %s (pip install 'splitserve[webrtc]')", exc)
        return None
    peers = WebRTCPeers(service)
    peers.max_message_bytes = cfg.max_message_bytes
    return peers


def default_web_root() -> Path | None:
    """The browser SDK's build in a checkout of this repository (clients/web/dist), if there is one."""
    root = Path(__file__).resolve().parents[3] / "clients" / "web" / "dist"
    return root if root.is_dir() else None


class EdgeServer:
    """One server process. With ``serve_metrics=False`` it records metrics but leaves the /metrics
    endpoint to its supervisor (``--workers``: Prometheus multiprocess mode, one port for all)."""

    def __init__(self, cfg: ServerConfig, batching_overrides: dict | None = None, serve_metrics: bool = True) -> None:
        self.cfg = cfg
        self.serve_metrics = serve_metrics
        self.device = resolve_device(cfg.device)
        self.worker = DeviceWorker(self.device)
        self.decode_pool = ThreadPoolExecutor(cfg.decode_threads, thread_name_prefix="decode")
        root = Path(cfg.models) if cfg.models else None
        self.repository = ModelRepository(root, self.worker, self.decode_pool, cfg.batching, batching_overrides or {})
        self.pipeline = InferencePipeline(self.repository, cfg)
        self.service = EdgeInferenceService(self.pipeline, self.repository, cfg.max_inflight_per_stream)
        self.service.max_streams = cfg.max_streams
        self.service.webrtc = _webrtc_peers(self.service, cfg)
        self.health = health.aio.HealthServicer()
        self.metrics = ServerMetrics() if cfg.metrics_port else None
        if self.metrics is not None:
            self.pipeline.metrics = self.metrics
            self.service.metrics = self.metrics
            self.repository.metrics = self.metrics
        self.interceptors = []
        self.tokens = load_tokens(cfg.tokens) if cfg.tokens else None  # for gRPC and HTTP alike
        if self.tokens:
            self.interceptors.append(TokenAuthInterceptor(self.tokens, cfg.public_health))
            log.info("bearer-token auth on (%d tokens%s)", len(self.tokens),
                     "; health public" if cfg.public_health else "")  # fmt: skip
        self.server: grpc.aio.Server | None = None
        self.http = None  # HttpFrontend, with --http-port
        self.port = cfg.port
        self._stopped = asyncio.Event()
        self._poller: asyncio.Task | None = None

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            result = self.health.set(name, status)
            if asyncio.iscoroutine(result):
                await result

    async def start(self) -> None:
        if self.cfg.models and not Path(self.cfg.models).is_dir():
            raise FileNotFoundError(f"--models {self.cfg.models}: no such directory")
        before = process_age_s()
        t0 = time.perf_counter()
        await self.repository.scan()
        models_s = time.perf_counter() - t0
        if self.repository.empty:
            raise RuntimeError(f"no servable model bundles under {self.repository.root}")
        self.server = grpc.aio.server(options=channel_options(self.cfg), interceptors=self.interceptors)
        pb_grpc.add_EdgeInferenceServicer_to_server(self.service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection([SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        address = f"{self.cfg.host}:{self.cfg.port}"
        credentials = self._tls_credentials()
        if credentials is not None:
            self.port = self.server.add_secure_port(address, credentials)
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {address}")
        t1 = time.perf_counter()
        await self.server.start()
        grpc_s = time.perf_counter() - t1
        if self.cfg.http_port:
            await self._start_http()
        if self.metrics is not None and self.serve_metrics:
            self.metrics.serve(self.cfg.metrics_port, self.cfg.metrics_host)
            log.info("metrics on http://%s:%d/metrics", self.cfg.metrics_host, self.cfg.metrics_port)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self.cfg.poll_interval > 0:
            self._poller = asyncio.create_task(self._poll())
        models = ", ".join(f"{m.bundle.name}:{m.bundle.version}" for m in self.repository.models())
        log.info("edge-server listening on %s:%d (device %s; models %s)", self.cfg.host, self.port, self.device, models)
        age = process_age_s()
        if age is not None and before is not None:  # where start-up went, for the 10 s SERVING target
            log.info(
                "SERVING %.1f s after the process started: %.1f s interpreter and imports, %.1f s loading and "
                "warming up models, %.2f s starting gRPC", age, before, models_s, grpc_s,
            )  # fmt: skip
        for warning in exposure_warnings(self.cfg):
            log.warning("%s", warning)

    async def _start_http(self) -> None:
        from splitserve.edge_server.http import HttpFrontend, ssl_context

        if self.service.webrtc is None:
            raise RuntimeError("--http-port serves WebRTC peers: pip install 'splitserve[webrtc]'")
        web_root = Path(self.cfg.web_root) if self.cfg.web_root else default_web_root()
        self.http = HttpFrontend(self.service, self.tokens, self.cfg.cors_origins, self.cfg.max_offer_bytes, web_root)
        context = ssl_context(self.cfg.tls_cert, self.cfg.tls_key) if self.cfg.tls_cert else None
        port = await self.http.start(self.cfg.host, self.cfg.http_port, context)
        log.info("HTTP%s for browsers on %s:%d (WHIP at /v1/whip, bundles at /v1/bundles/)",
                 "S" if context else "", self.cfg.host, port)  # fmt: skip

    def _tls_credentials(self) -> grpc.ServerCredentials | None:
        if not self.cfg.tls_cert:
            return None
        key = Path(self.cfg.tls_key).read_bytes()
        cert = Path(self.cfg.tls_cert).read_bytes()
        client_ca = Path(self.cfg.tls_client_ca).read_bytes() if self.cfg.tls_client_ca else None
        log.info("TLS on%s", " with client certificates required (mutual TLS)" if client_ca else "")
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.poll_interval)
            try:
                await self.repository.scan()
            except Exception:  # a bad scan must not stop future scans
                log.exception("model repository scan failed")

    async def drain_and_stop(self) -> None:
        """Stop taking work, answer everything accepted, then stop (bounded by drain_timeout)."""
        if self.server is None or self._stopped.is_set():
            return
        if self.service.draining.is_set():  # a second signal while draining: the first drain finishes
            await self._stopped.wait()
            return
        log.info("draining: no new streams; answering frames in flight (up to %.0f s)", self.cfg.drain_timeout)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._poller:
            self._poller.cancel()
        self.service.draining.set()
        for session in list(self.service.sessions):
            session.begin_drain()
        try:
            await asyncio.wait_for(self._drained(), self.cfg.drain_timeout)
        except TimeoutError:
            log.warning("drain timeout: %d streams still open", len(self.service.sessions))
        await self.server.stop(grace=2.0)
        if self.http is not None:
            await self.http.stop()
        if self.service.webrtc is not None:
            await self.service.webrtc.close()
        for batcher in self.repository.batchers():
            await batcher.close()
        self.worker.shutdown()
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()
        log.info("edge-server stopped")

    async def _drained(self) -> None:
        while any(s.inflight for s in self.service.sessions) or self.service.sessions:
            await asyncio.sleep(0.02)

    async def wait(self) -> None:
        await self._stopped.wait()


async def serve(
    cfg: ServerConfig,
    batching_overrides: dict | None = None,
    serve_metrics: bool = True,
    on_started: Callable[[int], None] | None = None,
) -> None:
    """Run one server process until SIGTERM / SIGINT has drained it; ``on_started(port)`` once SERVING."""
    server = EdgeServer(cfg, batching_overrides, serve_metrics)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.drain_and_stop()))
    if on_started is not None:
        on_started(server.port)
    await server.wait()
