"""Edge-server settings: flags, with an optional TOML file for anything long.

Precedence: built-in defaults < ``--config FILE.toml`` < explicit flags.
Per-model batching can also come from ``<models>/<name>/config.toml``
(like Triton's model config); flags override it for every model.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ServerConfigError(ValueError):
    """A setting is invalid; the message names it."""


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
    # security
    tokens: str = ""  # file of bearer tokens; "" = no auth
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""  # require client certificates signed by this CA (mutual TLS)
    public_health: bool = True  # health + reflection reachable without a token
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
        if self.max_tags_bytes < 0:
            raise ServerConfigError(f"max_tags_bytes must be >= 0, got {self.max_tags_bytes}")
        if self.max_frame_bytes > self.max_message_bytes:
            raise ServerConfigError("max_frame_bytes cannot exceed max_message_bytes")
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


def _apply(obj: Any, data: dict[str, Any], where: str) -> None:
    known = {f.name: f for f in fields(obj)}
    for key, value in data.items():
        key_attr = key.replace("-", "_")
        if key_attr not in known:
            raise ServerConfigError(f"{where}: unknown setting {key!r}; known: {sorted(known)}")
        current = getattr(obj, key_attr)
        if isinstance(current, BatchingConfig):
            if not isinstance(value, dict):
                raise ServerConfigError(f"{where}: [{key}] must be a table")
            _apply(current, value, f"{where} [{key}]")
            continue
        if isinstance(current, bool):
            ok = isinstance(value, bool)
        elif isinstance(current, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok and isinstance(current, int) and not isinstance(current, bool):
                ok = float(value).is_integer()
                value = int(value)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise ServerConfigError(f"{where}: {key} = {value!r} should be a {type(current).__name__}")
        setattr(obj, key_attr, float(value) if isinstance(current, float) else value)


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ServerConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ServerConfigError(f"{path}: not valid TOML ({exc})") from None


def build_config(file: str | None, overrides: dict[str, Any]) -> ServerConfig:
    cfg = ServerConfig()
    if file:
        _apply(cfg, load_toml(file), str(file))
    batching = {k: overrides.pop(k) for k in ("max_batch", "max_delay_ms", "max_queue") if k in overrides}
    _apply(cfg, overrides, "flags")
    _apply(cfg.batching, batching, "flags")
    cfg.validate()
    return cfg


def model_batching(default: BatchingConfig, model_dir: Path, overrides: dict[str, Any]) -> BatchingConfig:
    """Batching for one model: server defaults < ``<model>/config.toml`` [batching] < flags."""
    cfg = BatchingConfig(**vars(default))
    per_model = model_dir / "config.toml"
    if per_model.is_file():
        data = load_toml(per_model)
        if "batching" in data:
            _apply(cfg, data["batching"], str(per_model))
    _apply(cfg, overrides, "flags")
    cfg.validate(str(per_model))
    return cfg
