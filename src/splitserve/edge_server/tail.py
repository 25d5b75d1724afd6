"""The tail on a compute device: decoded tensors in, top-k classes out.

Each compute device gets one worker thread, so batches run one after another on
it and never on the event loop. A TailRunner is the server half of one model
version for one batch key (a width of the entropic codec, the raw-feature path
or the image path) on that device.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from splitserve.codecs import BatchKey
from splitserve.models.bundle import Bundle


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
    """The server stage of one (model, version, batch key) on one device; called on its worker thread."""

    def __init__(self, bundle: Bundle, codec: str, key: BatchKey, worker: DeviceWorker) -> None:
        self.bundle = bundle
        self.key = key
        self.name = f"{bundle.name}:{bundle.version}/{key}"  # for logs
        self.worker = worker
        self.device = worker.device
        with torch.no_grad():
            self.module = bundle.server_stage(codec, key.width).to(self.device).eval()
        self._pin = self.device.type == "cuda"

    def warm_up(self) -> None:
        """Run one all-zero payload tensor through, so the first real frame does not pay for set-up."""
        shape = self.key.kind.payload_shape(self.bundle, self.key.width)
        self.run([torch.from_numpy(np.zeros(shape, dtype=self.key.kind.dtype))], 1)

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
