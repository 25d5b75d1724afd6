"""Bearer-token authentication for every RPC (optionally sparing health checks and reflection).

Tokens file: one token per line, or ``client-name token``; blank lines and
``#`` comments are ignored. A call without a valid ``authorization: Bearer
<token>`` metadata entry ends with UNAUTHENTICATED before any handler runs.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path

import grpc

log = logging.getLogger("splitserve.server")
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                   "/grpc.reflection.v1.ServerReflection/")  # fmt: skip


def load_tokens(path: str | Path) -> dict[str, str]:
    """token -> client name."""
    tokens: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) > 2:
            raise ValueError(f"{path}:{n}: expected 'token' or 'client-name token'")
        name, token = (parts[0], parts[1]) if len(parts) == 2 else (f"client-{n}", parts[0])
        if len(token) < 16:
            raise ValueError(f"{path}:{n}: token too short (at least 16 characters)")
        tokens[token] = name
    if not tokens:
        raise ValueError(f"{path}: no tokens")
    return tokens


def bearer_client(tokens: dict[str, str], authorization: str) -> str | None:
    """The client an ``authorization`` value ("Bearer <token>") names, or None; the same for gRPC and HTTP."""
    if not authorization.startswith("Bearer "):
        return None
    given = authorization[7:].strip()
    for token, name in tokens.items():
        if hmac.compare_digest(given, token):
            return name
    return None


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    async def abort(request, context):  # type: ignore[no-untyped-def]
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def abort_stream(request, context):  # type: ignore[no-untyped-def]
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    kwargs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(abort, **kwargs)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: dict[str, str], public_health: bool = True) -> None:
        self.tokens = tokens
        self.public_health = public_health

    def _client(self, metadata) -> str | None:  # type: ignore[no-untyped-def]
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str):
                return bearer_client(self.tokens, value)
        return None

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or (self.public_health and method.startswith(PUBLIC_PREFIXES)):
            return handler
        if self._client(handler_call_details.invocation_metadata) is None:
            log.warning("refused %s: missing or invalid bearer token", method)
            return _deny(handler, "missing or invalid bearer token (send 'authorization: Bearer <token>')")
        return handler
