"""The device half: camera frame -> head at a width -> codec -> payload.

Switching width is just a different argument on the next frame: every width's
weights are the same tensors, nothing is reloaded. The head itself runs in a
runtime (torch, or onnxruntime on a device without torch; see ``runtimes``): the
codec codes what either computes into the same bytes.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from splitserve.codecs import codec_kind
from splitserve.codecs.base import as_array
from splitserve.device_client.runtimes import make_runtime
from splitserve.models.coding import CodingBundle

if TYPE_CHECKING:
    import torch


@dataclass
class EncodedFrame:
    codec: str
    width: int
    payload: bytes
    shape: tuple[int, ...]
    head_ms: float  # head compute + encoding on this device


class HeadRunner:
    """Runs a bundle's device side. Not thread-safe: one runner per device thread.

    ``runtime``: torch | onnx | auto (torch where installed). ``bundle`` afterwards is the
    runtime's: the full torch ``Bundle`` with the torch runtime.
    """

    def __init__(self, bundle: CodingBundle, threads: int | None = None, runtime: str = "auto") -> None:
        self.runtime = make_runtime(runtime, bundle, threads)
        self.bundle: Any = self.runtime.bundle

    def check_image(self, image: np.ndarray | torch.Tensor) -> np.ndarray:
        frame = as_array(image)
        expected = self.bundle.input.image_shape
        if frame.ndim == 2 and expected[2] == 1:
            frame = frame[..., None]
        if tuple(frame.shape) != expected or frame.dtype != np.uint8:
            raise ValueError(
                f"{self.bundle.name} takes uint8 frames of shape {list(expected)} (H, W, C); "
                f"got {frame.dtype} {list(frame.shape)}"
            )
        return frame

    def encode(self, image: np.ndarray | torch.Tensor, codec: str = "entropic", width: int = -1, quality: int = 75):
        """One frame -> EncodedFrame. ``width`` -1 means the widest (for codecs with widths)."""
        frame = self.check_image(image)
        kind = codec_kind(codec)
        width = (self.bundle.width_count - 1 if width < 0 else width) if kind.has_widths else 0
        shape = self.bundle.payload_shape(codec, width)  # refuses a codec or width the bundle lacks
        encoder = self.bundle.encoder_for(codec, width, **({"quality": quality} if kind.has_quality else {}))
        t0 = time.perf_counter()
        data = self.runtime.features(frame, codec, width) if kind.has_device_stage else frame
        payload = encoder.encode(data)
        head_ms = (time.perf_counter() - t0) * 1e3
        return EncodedFrame(codec, width, payload, shape, head_ms)

    def infer_whole(self, image: np.ndarray | torch.Tensor) -> tuple[np.ndarray, float]:
        """Local-only inference with the whole, unsplit model: (softmax scores, compute ms)."""
        frame = self.check_image(image)
        t0 = time.perf_counter()
        logits = self.runtime.logits(frame).astype(np.float64)
        scores = np.exp(logits - logits.max())
        return (scores / scores.sum()).astype(np.float32), (time.perf_counter() - t0) * 1e3


class DeviceCompute:
    """A HeadRunner on its own thread, as a device's one head runs frames one at a time; with an emulated slowdown.

    ``slowdown`` > 1 makes every head and local inference take that many times as long (the extra time is
    slept, not computed), so a fast machine can stand in for a phone or a Pi.
    """

    def __init__(self, runner: HeadRunner, slowdown: float = 1.0, image_quality: int = 75) -> None:
        self.runner = runner
        self.slowdown = max(1.0, float(slowdown))
        self.image_quality = image_quality
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="head")

    async def encode(self, image: np.ndarray | torch.Tensor, codec: str, width: int) -> EncodedFrame:
        loop = asyncio.get_running_loop()
        enc = await loop.run_in_executor(self._pool, self.runner.encode, image, codec, width, self.image_quality)
        enc.head_ms += await self._slow_down(enc.head_ms)
        return enc

    async def infer_whole(self, image: np.ndarray | torch.Tensor) -> tuple[np.ndarray, float]:
        """(softmax scores, compute ms) of the whole model on this device."""
        scores, ms = await asyncio.get_running_loop().run_in_executor(self._pool, self.runner.infer_whole, image)
        return scores, ms + await self._slow_down(ms)

    async def _slow_down(self, ms: float) -> float:
        extra = ms * (self.slowdown - 1)
        if extra > 0:
            await asyncio.sleep(extra / 1e3)
        return extra

    async def warm(self, codec: str, widths: list[int]) -> float:
        """Run each width once on a blank frame, so no frame's deadline pays for a cold start; the ms it took.

        A runtime builds a width's session (onnxruntime) or first kernels (torch) on first use, which takes
        several times a frame's head time: on the first frame at that width it would count against the deadline.
        """
        frame = np.zeros(self.runner.bundle.input.image_shape, dtype=np.uint8)
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        for width in widths:
            await loop.run_in_executor(self._pool, self.runner.encode, frame, codec, width, self.image_quality)
        return (time.perf_counter() - t0) * 1e3

    def local_ms(self, repeat: int = 5) -> float:
        """Local-only inference time on this device (slowdown applied), for the policy's fallback."""
        frame = np.zeros(self.runner.bundle.input.image_shape, dtype=np.uint8)
        self.runner.infer_whole(frame)
        return float(np.median([self.runner.infer_whole(frame)[1] for _ in range(repeat)])) * self.slowdown

    def close(self) -> None:
        self._pool.shutdown(wait=False)
