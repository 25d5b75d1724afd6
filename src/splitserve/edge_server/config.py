"""Edge-server settings: flags, with an optional TOML file for anything long.

Precedence: built-in defaults < ``--config FILE.toml`` < explicit flags.
Per-model batching can also come from ``<models>/<name>/config.toml``
(like Triton's model config); flags override it for every model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitserve.tomlconfig import fill, read_toml


class ServerConfigError(ValueError):
    """A setting is invalid; the message names it."""


# How long an aged connection's stream may go on after GOAWAY: a device holds one stream for ever, so
# this is when it moves; frames unanswered then are sent again on the next stream.
MAX_CONNECTION_AGE_GRACE_S = 2.0


@dataclass
class BatchingConfig:
    max_batch: int = 32
    max_delay_ms: float = 2.0
    max_queue: int = 256  # frames waiting per (model, version, width) before OVERLOADED

    def validate(self, where: str = "batching") -> None:
        if self.max_batch < 1:
            raise ServerConfigError(f"{where}: max_batch must be >= 1, got {self.max_batch}")
        if self.max_delay_ms < 0:
            raise ServerConfigError(f"{where}: max_delay_ms must be >= 0, got {self.max_delay_ms}")
        if self.max_queue < 1:
            raise ServerConfigError(f"{where}: max_queue must be >= 1, got {self.max_queue}")


@dataclass
class ServerConfig:
    host: str = "[::]"
    port: int = 50051
    models: str = ""  # model repository; "" = the bundled models
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    decode_threads: int = 4
    workers: int = 0  # server processes sharing the port; 0 = auto (one per 4 cores, 1 to 8)
    # limits
    max_message_bytes: int = 4 * 1024 * 1024  # gRPC hard cap: larger messages end the stream
    max_frame_bytes: int = 1024 * 1024  # per-frame payload cap: larger frames get INVALID_FRAME
    max_inflight_per_stream: int = 64  # also the results a stream may have waiting to be sent
    max_tags_bytes: int = 4096  # a frame's tags (keys + values), echoed in its result; larger: INVALID_FRAME
    max_streams: int = 1024
    default_top_k: int = 5
    # lifecycle
    poll_interval: float = 0.0  # seconds between model repository scans; 0 = never
    drain_timeout: float = 20.0
    # > 0: a connection older than this (+-10 %) gets GOAWAY and its stream ends MAX_CONNECTION_AGE_GRACE_S
    # later; the device reconnects through the balancer (and sends again what was unanswered), so that
    # new replicas get streams too (simulate fleet: pinned streams never move otherwise)
    max_connection_age: float = 0.0
    # security
    tokens: str = ""  # file of bearer tokens; "" = no auth
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""  # require client certificates signed by this CA (mutual TLS)
    public_health: bool = True  # health + reflection reachable without a token
    # HTTP for browsers: WHIP signalling and the bundles (0 = off); same --host and TLS as gRPC
    http_port: int = 0
    cors_origins: list[str] = field(default_factory=list)  # origins whose pages may call the HTTP API
    max_offer_bytes: int = 64 * 1024
    web_root: str = ""  # the built browser SDK (its demo/ is served at /demo/); "" = the checkout's clients/web/dist
    # observability
    metrics_port: int = 0  # 0 = no metrics endpoint
    metrics_host: str = "0.0.0.0"
    log_format: str = "text"  # text | json
    log_level: str = "info"

    def validate(self) -> None:
        if not 0 <= self.port < 65536:
            raise ServerConfigError(f"port must be within 0..65535, got {self.port}")
        self.batching.validate()
        for name in ("max_message_bytes", "max_frame_bytes", "max_inflight_per_stream", "max_streams"):
            if getattr(self, name) < 1:
                raise ServerConfigError(f"{name} must be >= 1")
        if not 0 <= self.http_port < 65536:
            raise ServerConfigError(f"http_port must be within 0..65535 (0: off), got {self.http_port}")
        if self.max_offer_bytes < 1024:
            raise ServerConfigError(f"max_offer_bytes must be >= 1024, got {self.max_offer_bytes}")
        for origin in self.cors_origins:
            if not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
                raise ServerConfigError(f"cors_origins: {origin!r} is not an origin (scheme://host[:port])")
        if self.max_tags_bytes < 0:
            raise ServerConfigError(f"max_tags_bytes must be >= 0, got {self.max_tags_bytes}")
        if self.max_frame_bytes > self.max_message_bytes:
            raise ServerConfigError("max_frame_bytes cannot exceed max_message_bytes")
        if self.max_connection_age < 0:
            raise ServerConfigError("max_connection_age must be >= 0 (0: streams never age out)")
        if self.workers < 0:
            raise ServerConfigError(f"workers must be >= 0 (0 picks one per 4 cores), got {self.workers}")
        if self.decode_threads < 1:
            raise ServerConfigError("decode_threads must be >= 1")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ServerConfigError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca and not self.tls_cert:
            raise ServerConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key too")
        if self.log_format not in ("text", "json"):
            raise ServerConfigError(f"log_format must be text or json, got {self.log_format!r}")
        for path_field in ("tokens", "tls_cert", "tls_key", "tls_client_ca"):
            value = getattr(self, path_field)
            if value and not Path(value).is_file():
                raise ServerConfigError(f"{path_field}: file not found: {value}")


def build_config(file: str | None, overrides: dict[str, Any]) -> ServerConfig:
    cfg = ServerConfig()
    if file:
        fill(cfg, read_toml(file, ServerConfigError), str(file), ServerConfigError)
    batching = {k: overrides.pop(k) for k in ("max_batch", "max_delay_ms", "max_queue") if k in overrides}
    fill(cfg, overrides, "flags", ServerConfigError)
    fill(cfg.batching, batching, "flags", ServerConfigError)
    cfg.validate()
    return cfg


def model_batching(default: BatchingConfig, model_dir: Path, overrides: dict[str, Any]) -> BatchingConfig:
    """Batching for one model: server defaults < ``<model>/config.toml`` [batching] < flags."""
    cfg = BatchingConfig(**vars(default))
    per_model = model_dir / "config.toml"
    if per_model.is_file():
        data = read_toml(per_model, ServerConfigError)
        if "batching" in data:
            fill(cfg, data["batching"], f"{per_model} [batching]", ServerConfigError)
    fill(cfg, overrides, "flags", ServerConfigError)
    cfg.validate(str(per_model))
    return cfg
