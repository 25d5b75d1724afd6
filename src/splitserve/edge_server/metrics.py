"""Prometheus metrics, all prefixed ``splitserve_``; labels model, version, width, status, transport only.

``width`` is the width index for entropic frames and the path name ("features",
"image") for the raw-feature and image baselines, so label cardinality stays
bounded by what the repository serves: frames naming unknown models count
under model="unknown", never under the name a client made up.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
UNKNOWN = "unknown"
# The results a served (model, version, width) can end in, and those of frames that name no
# served model. Their series are created at 0 up front: a rate over a series that is born
# with the first error reads 0 until the second scrape, and "no errors yet" would show as
# "No data" instead of 0.
SERVED_STATUSES = ("OK", "DEADLINE_EXCEEDED", "INVALID_FRAME", "OVERLOADED", "INTERNAL", "UNAVAILABLE")
UNKNOWN_STATUSES = ("UNKNOWN_MODEL", "INVALID_FRAME", "INTERNAL")


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        labels = ("model", "version", "width")
        self.frames_received = Counter(
            "splitserve_frames_received", "Frames read off streams and unary calls", labels, registry=r
        )
        self.frames_completed = Counter(
            "splitserve_frames_completed", "Frames answered, by result status", (*labels, "status"), registry=r
        )
        self.bytes_received = Counter("splitserve_bytes_received", "Payload bytes received", labels, registry=r)
        self.latency = Histogram(
            "splitserve_server_latency_seconds", "Frame received -> result ready, on the server",
            labels, buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue = Histogram(
            "splitserve_queue_seconds", "Time a decoded frame waited for its batch to start",
            labels, buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.decode = Histogram(
            "splitserve_decode_seconds", "Payload decoding time per frame", labels, buckets=_LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.tail = Histogram(
            "splitserve_tail_seconds", "Decoder + tail compute time per batch", labels, buckets=_LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "splitserve_batch_size", "Frames per batch run on the device", labels, buckets=_BATCH_BUCKETS, registry=r
        )
        # livesum: with --workers (Prometheus multiprocess mode) the live workers' values add up
        self.inflight = Gauge(
            "splitserve_inflight_frames", "Frames accepted and not yet answered",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        # transport: "grpc" (Stream calls) or "webrtc" (peer connections)
        self.streams = Gauge(
            "splitserve_active_streams", "Open streams: gRPC Stream calls and WebRTC peers", ("transport",),
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.transport_frames = Counter(
            "splitserve_transport_frames_received", "Frames read off each transport", ("transport",), registry=r
        )
        for transport in ("grpc", "webrtc"):  # both series exist (at 0) before the first stream of each
            self.streams.labels(transport)
            self.transport_frames.labels(transport)
        self.model_loads = Counter(
            "splitserve_model_loads", "Model bundle load attempts, by result (ok / refused)",
            ("model", "version", "status"), registry=r,
        )  # fmt: skip
        self.model_served(UNKNOWN, UNKNOWN, [UNKNOWN], UNKNOWN_STATUSES)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def model_served(
        self, model: str, version: str, widths: list[str], statuses: tuple[str, ...] = SERVED_STATUSES
    ) -> None:
        """Create the frame counters a served model's frames will move, at 0 (see SERVED_STATUSES)."""
        for width in widths:
            self.frames_received.labels(model, version, width)
            self.bytes_received.labels(model, version, width)
            for status in statuses:
                self.frames_completed.labels(model, version, width, status)

    def model_loaded(self, name: str, version: str, ok: bool) -> None:
        self.model_loads.labels(name, version, "ok" if ok else "refused").inc()

    def batch_done(self, model: str, version: str, width: str, size: int, tail_s: float) -> None:
        self.batch_size.labels(model, version, width).observe(size)
        self.tail.labels(model, version, width).observe(tail_s)
