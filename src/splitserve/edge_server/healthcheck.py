"""Container health probe: exit 0 when the local edge-server reports SERVING, 1 otherwise.

Kubernetes' built-in gRPC probe and Docker's HEALTHCHECK speak plaintext only; a server
started with --tls-cert needs a probe that does the TLS handshake. This one runs inside the
container (``python -m splitserve.edge_server.healthcheck``) and checks the standard
grpc.health.v1 service, which stays reachable without a token unless --private-health is set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(port: int, ca_cert: str = "", server_name: str = "", timeout: float = 3.0) -> bool:
    target = f"127.0.0.1:{port}"
    if ca_cert:
        creds = grpc.ssl_channel_credentials(root_certificates=Path(ca_cert).read_bytes())
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            print(f"edge-server on {target} not healthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return False
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"edge-server on {target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}",
              file=sys.stderr)  # fmt: skip
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m splitserve.edge_server.healthcheck", description=__doc__)
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--ca-cert", default="", help="PEM CA that signed the server certificate (enables TLS)")
    p.add_argument("--server-name", default="", help="name to check the server certificate against")
    p.add_argument("--timeout", type=float, default=3.0)
    args = p.parse_args(argv)
    if args.ca_cert and not Path(args.ca_cert).is_file():
        print(f"--ca-cert {args.ca_cert}: file not found", file=sys.stderr)
        return 1
    return 0 if check(args.port, args.ca_cert, args.server_name, args.timeout) else 1


if __name__ == "__main__":
    sys.exit(main())
