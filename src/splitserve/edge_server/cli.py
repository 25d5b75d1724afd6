"""``edge-server``: serve split models over gRPC.

edge-server --port 50051                       # the bundled models, CUDA if present
edge-server --models /srv/models --device cuda --max-batch 64 --metrics-port 9100
edge-server --workers 4 --device cuda          # four processes on one port feeding one GPU
edge-server --http-port 8443 --tls-cert c.pem --tls-key k.pem   # browsers too: WHIP + bundles
edge-server --config server.toml               # any flag, as TOML keys
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from splitserve.edge_server.config import ServerConfigError, build_config
from splitserve.logs import setup_logging

# flag -> (type, help); names match ServerConfig fields and TOML keys
_FLAGS: dict[str, tuple[type, str]] = {
    "host": (str, "address to listen on (default [::], all interfaces)"),
    "port": (int, "port to listen on (default 50051; 0 picks a free one)"),
    "models": (str, "model repository: <name>/<version>/ bundle directories (default: the bundled models)"),
    "device": (str, "auto | cpu | cuda | cuda:N (default auto)"),
    "max_batch": (int, "largest batch the tail runs (default 32; 1 turns batching off)"),
    "max_delay_ms": (float, "longest a frame waits for its batch to fill (default 2)"),
    "max_queue": (int, "frames queued per model width before OVERLOADED (default 256)"),
    "decode_threads": (int, "threads decoding batches of payloads, per worker (default 4)"),
    "workers": (
        int,
        "server processes sharing the port (SO_REUSEPORT), each decoding and batching its own streams; "
        "one /metrics port sums them all (default 0: one per 4 cores, 1 to 8)",
    ),
    "max_message_bytes": (int, "gRPC message size cap; larger messages end the stream (default 4 MiB)"),
    "max_frame_bytes": (int, "payload size cap; larger frames get INVALID_FRAME (default 1 MiB)"),
    "max_inflight_per_stream": (
        int,
        "frames in flight per stream before OVERLOADED; also the results a stream "
        "may have unsent before the server stops reading it (default 64)",
    ),
    "max_tags_bytes": (int, "largest tags a frame may carry (keys + values) before INVALID_FRAME (default 4096)"),
    "max_streams": (int, "concurrent streams before RESOURCE_EXHAUSTED (default 1024)"),
    "poll_interval": (float, "seconds between scans of --models for new versions (default 0: never)"),
    "drain_timeout": (float, "seconds to answer in-flight frames on SIGTERM (default 20)"),
    "max_connection_age": (float, "seconds after which a device's stream is ended gracefully so that it "
                                  "reconnects through the balancer (default 0: never)"),
    "tokens": (str, "file of bearer tokens (one per line, optionally 'client-name token'); enables auth"),
    "tls_cert": (str, "PEM server certificate (enables TLS)"),
    "tls_key": (str, "PEM server private key"),
    "tls_client_ca": (str, "PEM CA for client certificates (enables mutual TLS)"),
    "http_port": (
        int,
        "serve browsers over HTTP(S) on this port: WebRTC signalling (WHIP, POST /v1/whip) and the model "
        "bundles (GET /v1/bundles/...); TLS and tokens as for gRPC (default 0: off)",
    ),
    "max_offer_bytes": (int, "largest SDP offer POST /v1/whip accepts (default 65536)"),
    "web_root": (str, "the built browser SDK; /demo/ serves its demo/ (default: the checkout's clients/web/dist)"),
    "metrics_port": (int, "serve Prometheus /metrics on this port (default 0: off)"),
    "metrics_host": (str, "address for the metrics endpoint (default 0.0.0.0)"),
    "log_format": (str, "text | json"),
    "log_level": (str, "debug | info | warning | error"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-server", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", help="TOML file with any of the settings below")
    for name, (kind, text) in _FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=text)
    p.add_argument(
        "--cors-origin",
        dest="cors_origins",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="let pages from this origin (scheme://host[:port]) use the HTTP API; repeatable (default: none)",
    )
    p.add_argument(
        "--private-health",
        dest="public_health",
        action="store_false",
        default=None,
        help="require a token for health checks and reflection too",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    batching_flags = {k: overrides[k] for k in ("max_batch", "max_delay_ms", "max_queue") if k in overrides}
    try:
        cfg = build_config(args.config, overrides)
    except ServerConfigError as exc:
        print(f"edge-server: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level, cfg.log_format, background=True)  # a stalled log reader must not stall serving
    from splitserve.edge_server.workers import default_workers, supervise

    workers = cfg.workers or default_workers()
    try:
        if workers > 1:
            return supervise(cfg, batching_flags, workers)
        from splitserve.edge_server.server import serve  # heavy imports after argument errors are out

        asyncio.run(serve(cfg, batching_flags))
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"edge-server: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
