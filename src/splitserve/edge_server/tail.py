"""The tail on a compute device: decoded tensors in, top-k classes out.

Each compute device gets one worker thread, so batches run one after another on
it and never on the event loop. A TailRunner is the server half of one model
version at one width (or the raw-feature / image path) on that device.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from splitserve.codecs import IMAGE_CODECS
from splitserve.models.bundle import Bundle

log = logging.getLogger("splitserve.server")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def stage_key(codec: str, width: int) -> str:
    """Frames with the same stage key share one tail, so they batch together."""
    if codec == "entropic":
        return f"w{width}"
    return "image" if codec in IMAGE_CODECS else "features"


class DeviceWorker:
    """One thread per compute device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"tail-{device.type}")
        self._pool.submit(torch.set_grad_enabled, False).result()

    def submit(self, fn, *args) -> Future:  # type: ignore[no-untyped-def]
        return self._pool.submit(fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


@dataclass
class TopK:
    scores: torch.Tensor  # (B, k) softmax probabilities, CPU
    indices: torch.Tensor  # (B, k) class indices, CPU


class TailRunner:
    """The server stage of one (model, version, stage key) on one device; called on its worker thread."""

    def __init__(self, bundle: Bundle, codec: str, width: int, worker: DeviceWorker) -> None:
        self.bundle = bundle
        self.key = (bundle.name, bundle.version, stage_key(codec, width))
        self.worker = worker
        self.device = worker.device
        self.width = width
        self._lock = threading.Lock()
        with torch.no_grad():
            self.module = bundle.server_stage(codec, width).to(self.device).eval()
        self.num_classes = len(bundle.labels)
        self._pin = self.device.type == "cuda"

    def warm_up(self, example: torch.Tensor) -> None:
        self.run([example], 1)

    @torch.inference_mode()
    def run(self, inputs: list[torch.Tensor], top_k: int) -> TopK:
        batch = torch.stack(inputs)
        if self._pin:
            batch = batch.pin_memory()
        batch = batch.to(self.device, non_blocking=True)
        logits = self.module(batch)
        k = max(1, min(top_k, logits.shape[1]))
        scores, indices = torch.softmax(logits.float(), dim=1).topk(k, dim=1)
        return TopK(scores.cpu(), indices.cpu())
