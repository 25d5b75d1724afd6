"""The edge server over HTTP, for browsers: WebRTC signalling in the WHIP shape, and the model bundles.

``edge-server --http-port P`` serves, beside gRPC (over TLS with the same ``--tls-cert/--tls-key``):

- ``POST /v1/whip``: an SDP offer in (``Content-Type: application/sdp``), the answer out (201, with
  ``Location`` naming the peer and ``X-Splitserve-Window``, the frames it may have in flight), as RFC 9725
  has it; ``DELETE`` on the ``Location`` ends the peer. The peer feeds the same sessions, batcher,
  limits, metrics and drain as gRPC streams and the Python WebRTC peers (``edge_server.webrtc``).
- ``POST /v1/whip/<peer>/lane``: an offer for the peer's lane, a second peer connection that carries some
  of its frame pieces (201 and the answer; 404 for no such peer, 409 if it has its lane).
- ``GET /v1/models``: the served models' manifests, without their training records.
- ``GET /v1/bundles/<name>/<version>/<file>``: a bundle's device files (manifest, heads, tables), by a
  versioned path that never changes, so they carry year-long cache headers. Only files the manifest
  lists for devices are served; a name with a separator, ``..`` or anything else is a 404.
- ``GET /v1/samples/<name>.npz``: the sample frames shipped in the package (what the demo's selftest runs).
- ``GET /demo/``: the browser SDK's demo page (``clients/web``, built with ``npm run build``), from
  ``--web-root`` (default: the checkout's ``clients/web/dist``), cross-origin isolated (COOP and COEP
  headers) so that onnxruntime-web may use threads.

Bearer tokens work exactly as on gRPC (``--tokens``): every route needs ``Authorization: Bearer <token>``.
Browsers on other origins are let in only from ``--cors-origin`` (repeatable; none by default).
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from aiohttp import web

from splitserve.device_client.bundles import is_safe_name
from splitserve.edge_server.auth import bearer_client
from splitserve.edge_server.repository import UnknownModel
from splitserve.proto import edge_inference_pb2 as pb

log = logging.getLogger("splitserve.server")
SDP = "application/sdp"
MAX_OFFER_BYTES = 64 * 1024  # a datachannel offer is ~1-4 KB; anything near this is not one
IMMUTABLE = "public, max-age=31536000, immutable"
WINDOW_HEADER = "X-Splitserve-Window"


class HttpFrontend:
    """One aiohttp server on the edge server's event loop."""

    def __init__(self, service, tokens: dict[str, str] | None, cors_origins: list[str],  # type: ignore[no-untyped-def]
                 max_offer_bytes: int = MAX_OFFER_BYTES, web_root: Path | None = None) -> None:  # fmt: skip
        self.service = service
        self.tokens = tokens or {}
        self.cors_origins = set(cors_origins)
        self.max_offer_bytes = max_offer_bytes
        middlewares = [self._cors, self._isolated, self._errors]
        self.app = web.Application(client_max_size=max_offer_bytes, middlewares=middlewares)
        self.app.add_routes([
            web.post("/v1/whip", self.whip_offer),
            web.delete("/v1/whip/{peer}", self.whip_end),
            web.post("/v1/whip/{peer}/lane", self.whip_lane),
            web.get("/v1/models", self.models),
            web.get("/v1/bundles/{name}/{version}/{file}", self.bundle_file),
            web.get("/v1/samples/{name}.npz", self.sample),
        ])  # fmt: skip
        self.web_root = web_root
        demo = web_root / "demo" if web_root is not None else None
        if demo is not None and (demo / "index.html").is_file():
            self.app.router.add_get("/demo/", self._index(demo))
            self.app.router.add_static("/demo/", demo, show_index=False, follow_symlinks=False)
        else:
            self.app.router.add_get("/demo/{tail:.*}", self._no_demo)
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> int:
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host.strip("[]") or None, port, ssl_context=ssl_context, reuse_port=True)
        await site.start()
        sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    # -- middleware ----------------------------------------------------------------------------
    @web.middleware
    async def _cors(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        origin = request.headers.get("Origin")
        allowed = origin is not None and origin in self.cors_origins
        if request.method == "OPTIONS" and origin is not None:  # a preflight
            if not allowed:
                return web.Response(status=403, text=f"origin {origin} is not allowed (--cors-origin)\n")
            response: web.StreamResponse = web.Response(status=204)
        else:
            response = await handler(request)
        if allowed:
            response.headers["Access-Control-Allow-Origin"] = origin  # type: ignore[assignment]
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Expose-Headers"] = f"Location, {WINDOW_HEADER}"
        return response

    @web.middleware
    async def _isolated(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        """The demo is cross-origin isolated: onnxruntime-web then runs the head on two WASM threads.

        Threads need SharedArrayBuffer, which a browser gives only to an isolated page; everything the
        page loads (the SDK, onnxruntime's .wasm and its worker, the bundle) is same-origin, as
        ``require-corp`` asks.
        """
        response = await handler(request)
        if request.path.startswith("/demo/"):
            response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
            response.headers["Cross-Origin-Embedder-Policy"] = "require-corp"
        return response

    @web.middleware
    async def _errors(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        """Every refusal is a status with a one-line reason; no traceback reaches a client."""
        try:
            return await handler(request)
        except web.HTTPException as exc:  # a response, so that the CORS headers go on refusals too
            headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
            return web.Response(status=exc.status, text=exc.text or f"{exc.reason}\n", headers=headers)
        except Exception:
            log.exception("HTTP %s %s failed", request.method, request.path)
            return web.Response(status=500, text="internal error\n")

    def _authorize(self, request: web.Request) -> None:
        if not self.tokens:
            return
        if bearer_client(self.tokens, request.headers.get("Authorization", "")) is not None:
            return
        log.warning("refused HTTP %s %s: missing or invalid bearer token", request.method, request.path)
        raise web.HTTPUnauthorized(text="missing or invalid bearer token (send 'Authorization: Bearer <token>')\n",
                                   headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    # -- WHIP ----------------------------------------------------------------------------------
    async def whip_offer(self, request: web.Request) -> web.Response:
        sdp = await self._offer(request)
        from splitserve.edge_server.webrtc import SignalError, StreamsExhausted

        try:
            answer, peer_id = await self._peers().offer(pb.PeerOffer(sdp=sdp, type="offer"))
        except StreamsExhausted as exc:
            raise web.HTTPServiceUnavailable(text=f"{exc}\n", headers={"Retry-After": "1"}) from None
        except SignalError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        headers = {"Location": f"/v1/whip/{peer_id}", WINDOW_HEADER: str(answer.max_inflight)}
        return web.Response(status=201, body=answer.sdp.encode(), content_type=SDP, headers=headers)

    async def whip_lane(self, request: web.Request) -> web.Response:
        sdp = await self._offer(request)
        from splitserve.edge_server.webrtc import LaneRefused, NoSuchPeer, SignalError, StreamsExhausted

        try:
            answer = await self._peers().add_lane(request.match_info["peer"], pb.PeerOffer(sdp=sdp, type="offer"))
        except StreamsExhausted as exc:
            raise web.HTTPServiceUnavailable(text=f"{exc}\n", headers={"Retry-After": "1"}) from None
        except NoSuchPeer:
            raise web.HTTPNotFound(text="no such peer\n") from None
        except LaneRefused as exc:
            raise web.HTTPConflict(text=f"{exc}\n") from None
        except SignalError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        return web.Response(status=201, body=answer.sdp.encode(), content_type=SDP)

    def _peers(self):  # type: ignore[no-untyped-def]
        peers = self.service.webrtc
        if peers is None:
            raise web.HTTPNotImplemented(text="this server has no WebRTC (pip install 'splitserve[webrtc]')\n")
        return peers

    async def _offer(self, request: web.Request) -> str:
        """The SDP offer a WHIP request carries, from an authorized client; refusals as HTTP statuses."""
        self._authorize(request)
        if request.content_type != SDP:
            raise web.HTTPUnsupportedMediaType(text=f"send the SDP offer as {SDP}, not {request.content_type}\n")
        if request.content_length is not None and request.content_length > self.max_offer_bytes:
            raise web.HTTPRequestEntityTooLarge(self.max_offer_bytes, request.content_length,
                                                text=f"an offer is at most {self.max_offer_bytes} bytes\n")  # fmt: skip
        try:
            return (await request.read()).decode("utf-8")
        except UnicodeDecodeError:
            raise web.HTTPBadRequest(text="the offer is not UTF-8 text\n") from None

    async def whip_end(self, request: web.Request) -> web.Response:
        self._authorize(request)
        peers = self.service.webrtc
        if peers is None or not await peers.end(request.match_info["peer"]):
            raise web.HTTPNotFound(text="no such peer\n")
        return web.Response(status=200)

    # -- bundles -------------------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        self._authorize(request)
        manifests = [_public(m.bundle.manifest) for m in self.service.repository.models()]
        return web.json_response({"models": manifests}, headers={"Cache-Control": "no-cache"})

    async def bundle_file(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request)
        name, version, file = (request.match_info[k] for k in ("name", "version", "file"))
        if not all(map(is_safe_name, (name, version, file))):
            raise web.HTTPNotFound(text="no such file\n")
        try:
            bundle = self.service.repository.resolve(name, version).bundle
        except UnknownModel:
            raise web.HTTPNotFound(text=f"no model {name}:{version}\n") from None
        if bundle.version != version or file not in bundle.device_files():
            raise web.HTTPNotFound(text=f"{name}:{version} has no device file {file!r}\n")
        sha = bundle.manifest.get("files", {}).get(file, {}).get("sha256") or bundle.sha256
        headers = {"Cache-Control": IMMUTABLE, "ETag": f'"{sha}"'}
        if request.headers.get("If-None-Match") == f'"{sha}"':
            return web.Response(status=304, headers=headers)
        if file.endswith(".json"):
            headers["Content-Type"] = "application/json"
        return web.FileResponse(bundle.path / file, headers=headers)

    async def sample(self, request: web.Request) -> web.FileResponse:
        from splitserve.data.samples import SAMPLES

        self._authorize(request)
        name = request.match_info["name"]
        path = SAMPLES / f"{name}.npz"
        if not is_safe_name(name) or not path.is_file():
            raise web.HTTPNotFound(text=f"no sample {name!r}\n")
        return web.FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})

    async def _no_demo(self, request: web.Request) -> web.Response:
        where = self.web_root / "demo" if self.web_root is not None else "--web-root"
        return web.Response(status=404, text=f"the demo is not built ({where}): cd clients/web && npm ci && "
                                             "npm run build, or point --web-root at a built copy\n")  # fmt: skip

    @staticmethod
    def _index(folder: Path):  # type: ignore[no-untyped-def]
        async def index(request: web.Request) -> web.FileResponse:
            return web.FileResponse(folder / "index.html", headers={"Cache-Control": "no-cache"})

        return index


def _public(manifest: dict) -> dict:
    """A manifest as a browser needs it: everything but the training record (its config and history)."""
    return {k: v for k, v in manifest.items() if k != "training"}


def ssl_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
