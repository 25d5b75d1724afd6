"""gRPC channels to an edge server: plaintext or TLS (optionally with a client certificate), bearer token."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

# Mobile links drop idle NAT mappings within minutes and roam between networks:
# ping often enough to keep the stream's mapping alive and to notice a dead link.
KEEPALIVE_OPTIONS = [
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

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def _read(path: str) -> bytes | None:
    return Path(path).read_bytes() if path else None


def _options(settings: ChannelSettings) -> list[tuple[str, object]]:
    options: list[tuple[str, object]] = list(KEEPALIVE_OPTIONS)
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
    if settings.tls or settings.ca_cert or settings.client_cert:
        return grpc.aio.secure_channel(settings.target, _credentials(settings), options=_options(settings))
    return grpc.aio.insecure_channel(settings.target, options=_options(settings))


def sync_channel(settings: ChannelSettings) -> grpc.Channel:
    if settings.tls or settings.ca_cert or settings.client_cert:
        return grpc.secure_channel(settings.target, _credentials(settings), options=_options(settings))
    return grpc.insecure_channel(settings.target, options=_options(settings))
