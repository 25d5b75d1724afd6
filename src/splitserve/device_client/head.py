"""The device half: camera frame -> head at a width -> codec -> payload.

Switching width is just a different argument on the next frame: every width's
weights are the same tensors, nothing is reloaded. The head itself runs in a
runtime (torch, or onnxruntime on a device without torch; see ``runtimes``): the
codec codes what either computes into the same bytes.
"""

from __future__ import annotations

import time
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
        width = (self.bundle.student.widths - 1 if width < 0 else width) if kind.has_widths else 0
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
