"""Frames and streams for tests that talk gRPC to a real edge-server process."""

import queue

import grpc
import torch

from splitserve.proto import edge_inference_pb2 as pb
from splitserve.proto import edge_inference_pb2_grpc as pb_grpc


def good_frame(bundle, frame_id: int, width: int = -1) -> pb.Frame:
    from splitserve.data.samples import load_sample

    images, _ = load_sample("fmnist-test")
    width = bundle.student.widths - 1 if width < 0 else width
    with torch.inference_mode():
        y = bundle.device_stage("entropic", width)(bundle.preprocess()(torch.from_numpy(images[frame_id % 100])[None]))
    payload = bundle.encoder_for("entropic", width).encode(y[0])
    return pb.Frame(
        frame_id=frame_id, model=bundle.name, codec="entropic", width=width, payload=payload,
        shape=list(bundle.latent_shape(width)),
    )  # fmt: skip


class Stream:
    """A bidirectional stream driven one frame at a time."""

    def __init__(self, address: str, channel: grpc.Channel | None = None, metadata=()) -> None:
        self.channel = channel or grpc.insecure_channel(address)
        self.requests: queue.Queue = queue.Queue()
        self.responses = pb_grpc.EdgeInferenceStub(self.channel).Stream(
            iter(self.requests.get, None), metadata=metadata
        )

    def send(self, frame: pb.Frame) -> pb.Result:
        self.requests.put(frame)
        return next(self.responses)

    def put(self, frame: pb.Frame) -> None:
        self.requests.put(frame)

    def receive(self) -> pb.Result:
        return next(self.responses)

    def close(self) -> None:
        self.requests.put(None)
        list(self.responses)
        self.channel.close()
