"""What each strategy costs per frame, measured here on the model's sample frames.

Bytes are the real encoded payloads; device time is this CPU's (times the
device slowdown); server time is decode + tail for one frame on this CPU. The
analytic model and the sweep are driven by these measurements.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from splitserve.device_client.client import GRPC_FRAMING, frame_overhead
from splitserve.models.bundle import Bundle, DevicePath
from splitserve.proto import edge_inference_pb2 as pb
from splitserve.simulator.strategies import Strategy
from splitserve.timing import median_ms


@dataclass
class StrategyCost:
    bytes: np.ndarray  # payload bytes of each sample frame
    wire_overhead: int  # bytes a Frame message adds around its payload on the wire
    device_ms: float
    server_ms: float
    predictions: np.ndarray  # top-1 of each sample frame
    response_bytes: int = 200


def _response_bytes(bundle: Bundle) -> int:
    longest = max(bundle.labels, key=len)
    result = pb.Result(
        frame_id=1 << 20, status=pb.Result.Status.OK, model=bundle.name, version=bundle.version,
        top_k=[pb.ClassScore(index=999, label=longest, score=0.5)] * 5,
        timings=pb.ServerTimings(received_unix_us=time.time_ns() // 1000, decode_ms=1, queue_ms=1, tail_ms=1,
                                 total_ms=1, batch_size=1),
    )  # fmt: skip
    return result.ByteSize() + GRPC_FRAMING


def least_ms(fn: Callable[[], object], repeat: int = 30) -> float:
    """The least wall time of one call of fn over repeat calls, in ms: on a shared, busy machine the
    closest to what an idle CPU takes (the median there measures the other jobs too)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - t0) * 1e3)
    return best


@torch.inference_mode()
def measure(bundle: Bundle, strategy: Strategy, images: np.ndarray, slowdown: float = 1.0,
            timing: Callable[[Callable[[], object]], float] = median_ms) -> StrategyCost:  # fmt: skip
    one = torch.from_numpy(images[0])
    response = _response_bytes(bundle)
    if strategy.local:
        model = bundle.whole_model()
        preds = np.concatenate(
            [model(torch.from_numpy(images[s : s + 64])).argmax(1).numpy() for s in range(0, len(images), 64)]
        )
        ms = timing(lambda: model(one[None])) * slowdown
        return StrategyCost(np.zeros(len(images), dtype=np.int64), 0, ms, 0.0, preds, 0)
    codec = strategy.codec
    width = bundle.width_count - 1 if strategy.adaptive else max(strategy.width, 0)
    device = DevicePath(bundle, codec, width, **strategy.encoder_params())
    width, shape = device.width, device.shape
    decoder = bundle.decoder_for(codec, width)
    server = bundle.server_stage(codec, width)

    def head(frame: torch.Tensor) -> bytes:
        return device(frame[None])[0]

    payloads = [head(torch.from_numpy(img)) for img in images]
    decoded = [decoder.decode(p, shape) for p in payloads]
    preds = np.concatenate(
        [server(torch.stack(decoded[s : s + 64])).argmax(1).numpy() for s in range(0, len(decoded), 64)]
    )
    device_ms = timing(lambda: head(one)) * slowdown
    server_ms = timing(lambda: server(decoder.decode(payloads[0], shape)[None]))
    return StrategyCost(
        np.array([len(p) for p in payloads]), frame_overhead(bundle, codec, width), device_ms, server_ms, preds,
        response,
    )  # fmt: skip


def measure_widths(bundle: Bundle, images: np.ndarray, slowdown: float = 1.0,
                   timing: Callable[[Callable[[], object]], float] = median_ms) -> list[StrategyCost]:  # fmt: skip
    return [
        measure(bundle, Strategy(f"split:{w}", "entropic", width=w), images, slowdown, timing)
        for w in range(bundle.width_count)
    ]
