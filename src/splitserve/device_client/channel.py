"""gRPC channels to an edge server: plaintext or TLS (optionally with a client certificate), bearer token."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from splitserve.device_client.errors import ClientError

# Every channel's gRPC options. Keepalive: mobile links drop idle NAT mappings within minutes and
# roam between networks, so ping often enough to keep the stream's mapping alive and to notice a
# dead link. Message size: a frame or a head chunk stays well under 16 MiB.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    # gRPC's own reconnect backoff grows to 120 s: a server back after an outage would wait that long
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    # Several servers behind one target (dns:///edge-headless:50051 resolving to every replica,
    # or ipv4:10.0.0.1:50051,10.0.0.2:50051): connect to all of them and open each new stream
    # on the next ready one. Devices spread across replicas, and a stream that breaks (a server
    # drained on scale-down, or killed) reopens on a server that is up. gRPC's default,
    # pick_first, would pin every device to the first address. One address: no difference.
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
]


@dataclass
class ChannelSettings:
    target: str
    token: str = ""
    tls: bool = False
    ca_cert: str = ""  # PEM CA that signed the server's certificate ("" : system roots)
    client_cert: str = ""  # PEM client certificate, for mutual TLS
    client_key: str = ""
    server_name: str = ""  # override the name checked against the server certificate

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls or self.ca_cert or self.client_cert)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def _read(path: str) -> bytes | None:
    return Path(path).read_bytes() if path else None


def _options(settings: ChannelSettings) -> list[tuple[str, object]]:
    options: list[tuple[str, object]] = list(CHANNEL_OPTIONS)
    if settings.server_name:
        options.append(("grpc.ssl_target_name_override", settings.server_name))
    return options


def _credentials(settings: ChannelSettings) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.ca_cert),
        private_key=_read(settings.client_key),
        certificate_chain=_read(settings.client_cert),
    )


def aio_channel(settings: ChannelSettings) -> grpc.aio.Channel:
    if settings.uses_tls:
        return grpc.aio.secure_channel(settings.target, _credentials(settings), options=_options(settings))
    return grpc.aio.insecure_channel(settings.target, options=_options(settings))


def sync_channel(settings: ChannelSettings) -> grpc.Channel:
    if settings.uses_tls:
        return grpc.secure_channel(settings.target, _credentials(settings), options=_options(settings))
    return grpc.insecure_channel(settings.target, options=_options(settings))


def _host_port(target: str) -> tuple[str, int]:
    target = target.split("///", 1)[-1]
    host, _, port = target.rpartition(":")
    return host.strip("[]") or "localhost", int(port or 443)


def explain_tls_failure(settings: ChannelSettings, timeout: float = 3.0) -> str:
    """Why a TLS channel to ``settings.target`` does not come up, in words an operator can act on.

    gRPC only reports that the channel never became ready; this redoes the TCP connect
    and the TLS handshake with Python's ssl module and the same CA, client certificate
    and server name, and names the first thing that fails.
    """
    host, port = _host_port(settings.target)
    name = settings.server_name or host
    try:
        ctx = ssl.create_default_context(cafile=settings.ca_cert or None)
        if settings.client_cert:
            ctx.load_cert_chain(settings.client_cert, settings.client_key or None)
    except (OSError, ssl.SSLError) as exc:
        return f"cannot use the TLS files given ({exc})"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return f"no TCP connection to {host}:{port} ({exc.strerror or exc})"
    try:
        with ctx.wrap_socket(sock, server_hostname=name) as tls:
            # TLS 1.3 reports a refused client certificate only when the server's alert arrives
            tls.settimeout(timeout)
            try:
                tls.recv(1)
            except TimeoutError:
                pass
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code == 62 or "match" in (exc.verify_message or ""):  # X509_V_ERR_HOSTNAME_MISMATCH
            return f"the server's certificate is not valid for the name {name!r} (--server-name sets the name checked)"
        return (f"the server's certificate is not trusted ({exc.verify_message}); "
                "pass the CA that signed it with --ca-cert")  # fmt: skip
    except ssl.SSLError as exc:
        reason = (exc.reason or str(exc)).lower()
        if "certificate_required" in reason or "certificate required" in reason:
            return "the server requires a client certificate (--client-cert / --client-key)"
        if any(r in reason for r in ("unknown_ca", "bad_certificate", "certificate_unknown", "unknown ca")):
            return "the server refused this client certificate (not signed by a CA it trusts)"
        if "wrong_version" in reason or "record layer" in reason or "packet length" in reason:
            return "the server does not speak TLS on this port (is it running without --tls-cert?)"
        return f"TLS handshake failed ({exc.reason or exc})"
    except OSError as exc:
        return f"the connection closed during the TLS handshake ({exc})"
    finally:
        sock.close()
    return "the TLS handshake succeeds; the server may not speak gRPC on this port"


async def reach(channel: grpc.aio.Channel, settings: ChannelSettings, timeout: float) -> None:
    """Wait until the channel is ready; ClientError saying why not (for TLS, what the handshake says)."""
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout)
    except TimeoutError:
        why = ""
        if settings.uses_tls:  # gRPC only says "not ready": find out what the handshake says
            why = ": " + await asyncio.to_thread(explain_tls_failure, settings)
        raise ClientError(f"cannot reach the edge server at {settings.target} within {timeout:.0f} s{why}") from None
