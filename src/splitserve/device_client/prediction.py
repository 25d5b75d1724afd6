"""What a frame ends with (a Prediction), and the sizes a frame has on the wire."""


from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from splitserve.device_client.errors import ClientError
from splitserve.device_client.transports.grpc import GRPC_FRAMING
from splitserve.models.coding import CodingBundle
from splitserve.proto import edge_inference_pb2 as pb

if TYPE_CHECKING:
    from splitserve.device_client.head import EncodedFrame

__all__ = ["ClassScore", "ClientError", "Prediction", "frame_overhead", "make_frame", "status_name", "wire_bytes"]


@dataclass
class ClassScore:
    index: int
    label: str
    score: float


@dataclass
class Prediction:
    frame_id: int
    status: str  # a Result status name, or FAILED when the frame never got a result
    top_k: list[ClassScore] = field(default_factory=list)
    codec: str = ""
    width: int = 0
    payload_bytes: int = 0
    device_ms: float = 0.0  # compute on this device: head + encoding, or the whole model for a local frame
    latency_ms: float = 0.0  # from infer() to the result, head included
    server: dict[str, float] = field(default_factory=dict)
    error: str = ""
    local: bool = False  # computed on the device, no server involved
    attempts: int = 0  # times the frame was sent (more than 1 after a reconnect)
    bandwidth_bps: float | None = None  # the link estimate when the frame was planned
    rtt_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    @property
    def index(self) -> int | None:
        return self.top_k[0].index if self.top_k else None

    @property
    def label(self) -> str | None:
        return self.top_k[0].label if self.top_k else None

    @classmethod
    def of_scores(cls, frame_id: int, scores: np.ndarray, labels: list[str], top_k: int, ms: float) -> Prediction:
        """A frame computed on the device by the whole model: its top-k of the softmax ``scores``."""
        idx = np.argsort(-scores, kind="stable")[: min(top_k, len(scores))]
        return cls(frame_id=frame_id, status="OK", codec="local", device_ms=ms, local=True,
                   top_k=[ClassScore(int(i), labels[int(i)], float(scores[i])) for i in idx])  # fmt: skip

    def take(self, result: pb.Result) -> Prediction:
        """Fill in what the server answered."""
        self.status = status_name(result.status)
        self.error = result.error
        self.top_k = [ClassScore(c.index, c.label, c.score) for c in result.top_k]
        t = result.timings
        self.server = {"decode_ms": t.decode_ms, "queue_ms": t.queue_ms, "tail_ms": t.tail_ms,
                       "total_ms": t.total_ms, "batch_size": float(t.batch_size)}  # fmt: skip
        return self


def status_name(status: int) -> str:
    """A Result status as its proto name (the number, for a status this client does not know)."""
    return pb.Result.Status.Name(status) if status in pb.Result.Status.values() else str(status)


def wire_bytes(frame: pb.Frame) -> int:
    """Bytes a frame puts on a gRPC stream (TCP payload), payload and message framing included."""
    return frame.ByteSize() + GRPC_FRAMING


def frame_overhead(bundle: CodingBundle, codec: str, width: int) -> int:
    """Bytes a Frame of this model, codec and width puts on the link besides its payload.

    Measured on a Frame filled as the client fills one (ids, model, bundle sha256, shape,
    timestamps at their widest), so the policy and the simulator plan with the real size.
    """
    shape = bundle.payload_shape(codec, width)
    frame = pb.Frame(
        frame_id=1 << 20, model=bundle.name, version=bundle.version, bundle_sha256=bundle.sha256, codec=codec,
        width=width, payload=b"", shape=list(shape), capture_time_us=time.time_ns() // 1000, deadline_ms=150, top_k=5,
    )  # fmt: skip
    return frame.ByteSize() + 3 + GRPC_FRAMING  # +3: the payload field's tag and length


def make_frame(bundle: CodingBundle, enc: EncodedFrame, frame_id: int, top_k: int) -> pb.Frame:
    """The Frame that carries an encoded frame to the server (its deadline is set when it is written)."""
    return pb.Frame(
        frame_id=frame_id, model=bundle.name, version=bundle.version, bundle_sha256=bundle.sha256,
        codec=enc.codec, width=enc.width, payload=enc.payload, shape=list(enc.shape),
        capture_time_us=time.time_ns() // 1000, top_k=top_k,
    )  # fmt: skip
