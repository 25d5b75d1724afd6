"""The gRPC handlers of splitserve.v1.EdgeInference: thin, they delegate to the session and repository."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import grpc

from splitserve.edge_server.inference import InferencePipeline
from splitserve.edge_server.repository import ModelRepository, UnknownModel
from splitserve.edge_server.session import StreamSession
from splitserve.models.bundle import Bundle
from splitserve.proto import edge_inference_pb2 as pb
from splitserve.proto import edge_inference_pb2_grpc as pb_grpc

CHUNK_BYTES = 64 * 1024
# Stream's initial metadata: how many frames one stream may have in flight, so a client can keep
# within it instead of learning it from OVERLOADED answers (the device client reads this key).
WINDOW_METADATA = "splitserve-max-inflight"


async def _counted(frames: AsyncIterator[pb.Frame], counter) -> AsyncIterator[pb.Frame]:  # type: ignore[no-untyped-def]
    async for frame in frames:
        counter.inc()
        yield frame


def manifest_message(bundle: Bundle, labels: bool = True) -> pb.ModelManifest:
    """The bundle's manifest on the wire; without ``labels`` the class names and the full
    manifest.json stay out (a listing of every model need not carry 1,000 ImageNet labels)."""
    m = bundle.manifest
    return pb.ModelManifest(
        name=bundle.name,
        version=bundle.version,
        task=str(m.get("task", "")),
        input_shape=list(bundle.input.shape),
        labels=bundle.labels if labels else [],
        widths=[
            pb.WidthInfo(
                index=int(w["index"]),
                fraction=float(w["fraction"]),
                channels=int(w["channels"]),
                latent_shape=[int(s) for s in w["latent_shape"]],
                bytes_mean=float(w.get("bytes_mean") or 0.0),
                accuracy=float(w.get("accuracy") or w.get("agreement") or 0.0),
            )
            for w in bundle.widths
        ],
        codecs=bundle.codecs,
        files=[pb.FileInfo(path=k, sha256=v["sha256"], size=int(v["size"])) for k, v in m["files"].items()],
        bundle_sha256=bundle.sha256,
        manifest_json=json.dumps(dict(m), sort_keys=True) if labels else "",
    )


class EdgeInferenceService(pb_grpc.EdgeInferenceServicer):
    def __init__(self, pipeline: InferencePipeline, repository: ModelRepository, max_inflight: int) -> None:
        self.pipeline = pipeline
        self.repository = repository
        self.max_inflight = max_inflight
        self.draining = asyncio.Event()
        self.sessions: set[StreamSession] = set()
        self.max_streams: int | None = None
        self.metrics = None  # ServerMetrics, when on
        self.webrtc = None  # WebRTCPeers, when aiortc is installed (the server sets it)

    async def Stream(self, request_iterator, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Result]:
        if self.draining.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        if self.max_streams is not None and len(self.sessions) >= self.max_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"this server already has {len(self.sessions)} streams open"
            )
        await context.send_initial_metadata(((WINDOW_METADATA, str(self.max_inflight)),))
        session = StreamSession(self.pipeline, self.max_inflight, self.draining)
        self.sessions.add(session)
        if self.metrics is not None:
            self.metrics.streams.labels("grpc").inc()
            request_iterator = _counted(request_iterator, self.metrics.transport_frames.labels("grpc"))
        try:
            async for result in session.results(request_iterator):
                yield result
        finally:
            self.sessions.discard(session)
            if self.metrics is not None:
                self.metrics.streams.labels("grpc").dec()

    async def Signal(self, request: pb.PeerOffer, context: grpc.aio.ServicerContext) -> pb.PeerAnswer:
        """WebRTC signaling: the device's offer in, our answer out; frames then travel on its datachannels."""
        if self.webrtc is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server has no WebRTC (pip install aiortc)")
        if self.draining.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        from splitserve.edge_server.webrtc import SignalError, StreamsExhausted

        try:  # --max-streams is checked there, and the peer counted before anything is awaited
            return await self.webrtc.answer(request)
        except StreamsExhausted as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except SignalError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def Infer(self, request: pb.Frame, context: grpc.aio.ServicerContext) -> pb.Result:
        t0 = time.perf_counter()
        if self.draining.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        return await self.pipeline.infer(request, time.time_ns() // 1000, t0)

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[
                manifest_message(m.bundle, labels=request.include_labels)
                for m in self.repository.models(request.all_versions)
            ]
        )

    async def GetModel(self, request: pb.GetModelRequest, context) -> pb.ModelManifest:
        try:
            return manifest_message(self.repository.resolve(request.name, request.version).bundle)
        except UnknownModel as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))

    async def GetHead(self, request: pb.GetHeadRequest, context) -> AsyncIterator[pb.Chunk]:
        try:
            bundle = self.repository.resolve(request.name, request.version).bundle
        except UnknownModel as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        files = bundle.manifest["files"]
        for name in bundle.device_files():
            data = await asyncio.to_thread((bundle.path / name).read_bytes)
            sha = files[name]["sha256"] if name in files else bundle.sha256
            for offset in range(0, max(len(data), 1), CHUNK_BYTES):
                last = offset + CHUNK_BYTES >= len(data)
                yield pb.Chunk(
                    path=name,
                    offset=offset,
                    total_size=len(data),
                    data=data[offset : offset + CHUNK_BYTES],
                    sha256=sha if last else "",
                    last=last,
                    version=bundle.version,
                )
