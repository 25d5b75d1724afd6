"""Frames and streams for tests that talk gRPC to a real edge-server process, and symbols for the coders."""

import queue
import struct
import urllib.request
import zlib

import grpc
import numpy as np
import torch

from splitserve.codecs import ans
from splitserve.models.bundle import DevicePath
from splitserve.proto import edge_inference_pb2 as pb
from splitserve.proto import edge_inference_pb2_grpc as pb_grpc


def good_frame(bundle, frame_id: int, width: int = -1) -> pb.Frame:
    from splitserve.data.samples import load_sample

    images, _ = load_sample("fmnist-test")
    width = bundle.width_count - 1 if width < 0 else width
    device = DevicePath(bundle, "entropic", width)
    payload = device(torch.from_numpy(images[frame_id % 100])[None])[0]
    return pb.Frame(
        frame_id=frame_id, model=bundle.name, codec="entropic", width=width, payload=payload, shape=list(device.shape),
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


def png_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A 65-byte PNG whose header claims width x height RGB pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def jpeg_bomb(width: int = 65000, height: int = 65000) -> bytes:
    """A JPEG start-of-frame claiming width x height pixels, and nothing else."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"".join(bytes([i + 1, 0x11, 0]) for i in range(3))
    return b"\xff\xd8\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


def metrics_text(port: int) -> str:
    """What a real edge-server's /metrics serves on ``port``."""
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def parse_samples(text: str) -> dict[str, float]:
    """Every splitserve_* sample of a /metrics text, by series."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("splitserve_"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def metric_samples(port: int) -> dict[str, float]:
    return parse_samples(metrics_text(port))


def table_symbols(tables, n: int, rng: np.random.Generator):
    """Symbols to code with one width's entropy tables: (probabilities, constriction's CDFs, [likely, edges]).

    ``likely``: n symbols a channel drawn from the channel's own table; ``edges``: the same with the
    least likely symbols, both ends of each table, in two of every three places.
    """
    probabilities = [f.astype(np.float64) / float(f.sum()) for f in tables.freqs]
    cdfs = [ans.quantized_cdf(p) for p in probabilities]
    likely = np.stack([rng.choice(len(p), size=n, p=p) for p in probabilities]).astype(np.int32)
    edges = likely.copy()
    edges[:, ::3] = 0
    edges[:, 1::3] = np.array([len(p) - 1 for p in probabilities])[:, None]
    return probabilities, cdfs, [likely, edges]
