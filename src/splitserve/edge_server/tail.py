"""The tail on a compute device: a batch of decoded payloads in, top-k classes out.

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
from splitserve.models.backbones import TRACING
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


def fixed_batch_sizes(max_batch: int) -> tuple[int, ...]:
    """The batch sizes a CUDA tail runs: powers of two below ``max_batch``, and ``max_batch``.

    A batch is padded up to the next of these, so the device sees a handful of shapes,
    each warmed up (kernel selection, allocator) before the server reports SERVING.
    """
    sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
    return (*sizes, max_batch)


@dataclass
class TopK:
    scores: torch.Tensor  # (B, k) softmax probabilities, CPU
    indices: torch.Tensor  # (B, k) class indices, CPU


class TailRunner:
    """The server stage of one (model, version, batch key) on one device; called on its worker thread.

    On CUDA, batches are padded to ``fixed_batch_sizes(max_batch)`` and staged through one
    reused pinned host buffer (so the host-to-device copy is asynchronous DMA and no batch
    pins fresh memory). On CPU neither pays: padding would compute rows nobody asked for.
    ``fixed_sizes`` forces the padded path (tests check it on CPU).
    """

    def __init__(
        self, bundle: Bundle, codec: str, key: BatchKey, worker: DeviceWorker, max_batch: int = 1,
        fixed_sizes: bool | None = None,
    ) -> None:  # fmt: skip
        self.bundle = bundle
        self.key = key
        self.name = f"{bundle.name}:{bundle.version}/{key}"  # for logs
        self.worker = worker
        self.device = worker.device
        with torch.no_grad():
            self.module = bundle.server_stage(codec, key.width).to(self.device).eval()
        self.input_shape = key.kind.payload_shape(bundle, key.width)  # one decoded frame
        cuda = self.device.type == "cuda"
        self.sizes = fixed_batch_sizes(max_batch) if (cuda if fixed_sizes is None else fixed_sizes) else ()
        self._pin = cuda
        self._staging: torch.Tensor | None = None  # (max size, *frame shape) host buffer, pinned on CUDA

    def warm_up(self) -> None:
        """Run an all-zero payload tensor through at every batch size this runner will use (just 1 on
        CPU, where shapes are free), so the first real frames do not pay for set-up."""
        for size in self.sizes or (1,):
            self.run(np.zeros((size, *self.input_shape), dtype=self.key.kind.dtype), 1)

    def _stage(self, inputs: torch.Tensor) -> torch.Tensor:
        """The batch on the device: padded to the next fixed size through the reused host buffer."""
        n = len(inputs)
        size = next((s for s in self.sizes if s >= n), n)
        if self._staging is None or self._staging.shape[0] < size or self._staging.shape[1:] != inputs.shape[1:]:
            buffer = torch.zeros((max(self.sizes[-1], size), *inputs.shape[1:]), dtype=inputs.dtype)
            self._staging = buffer.pin_memory() if self._pin else buffer
        host = self._staging[:size]
        host[:n].copy_(inputs)  # rows n..size keep earlier frames: finite, computed, dropped
        # safe to reuse next batch: run() waits for the results, so this copy has finished by then
        return host.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def run(self, inputs: np.ndarray, top_k: int) -> TopK:
        """Top-k classes for a batch of decoded payloads (frames, *payload shape)."""
        batch = torch.from_numpy(inputs)
        with TRACING:  # a model version loading meanwhile may be tracing its teacher (see backbones)
            if self.sizes:
                logits = self.module(self._stage(batch))[: len(batch)]
            else:
                if self._pin:
                    batch = batch.pin_memory()
                logits = self.module(batch.to(self.device, non_blocking=True))
        k = max(1, min(top_k, logits.shape[1]))
        scores, indices = torch.softmax(logits.float(), dim=1).topk(k, dim=1)
        return TopK(scores.cpu(), indices.cpu())
